"""Pushpin's command socket (``command_spec``) through a real REQ socket: what ``pubcontrol``'s
``control_zmq_uri`` discovery sends, and every other request answered in turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from fanout_tx.core.codecs import tnetstring
from fanout_tx.tap import build_service, load_settings
from tests.support.helpers import RecordingSubscriber, wait_until
from tests.support.twistd import loopback_config


class CommandSocketTests(TestCase):
    def setUp(self) -> None:
        folder = Path(self.mktemp())
        config = loopback_config(folder, 0)
        config.write_text(config.read_text() + "command_spec=tcp://127.0.0.1:*\n")
        self.root, self.core = build_service(load_settings(str(config)), reactor)
        for name in ("zmq-pull", "zmq-sub", "zmq-command"):
            service = self.root.getServiceNamed(name)
            service.startService()
            self.addCleanup(service.stopService)
        self.req = zmq.Context.instance().socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.addCleanup(self.req.close)
        self.req.connect(self.root.getServiceNamed("zmq-command").endpoints[0])

    async def ask(self, *parts: bytes) -> dict[bytes, Any]:
        self.req.send_multipart(list(parts))
        await wait_until(lambda: self.req.poll(0, zmq.POLLIN))
        return tnetstring.loads(self.req.recv())

    async def test_get_zmq_uris(self) -> None:
        """The bound PUSH (PULL here) and PUB (SUB here) inputs, as pubcontrol reads them."""
        reply = await self.ask(tnetstring.dumps({b"id": b"1", b"method": b"get-zmq-uris"}))
        endpoint = {name: self.root.getServiceNamed(name).endpoints[0].encode()
                    for name in ("zmq-pull", "zmq-sub", "zmq-command")}
        self.assertEqual(reply, {b"id": b"1", b"success": True, b"value": {
            b"command": endpoint["zmq-command"], b"publish-pull": endpoint["zmq-pull"],
            b"publish-sub": endpoint["zmq-sub"]}})

    async def test_recover_and_bad_requests(self) -> None:
        """recover asks every held session to recover; malformed and unknown requests get
        a failure reply each, and the socket goes on answering."""
        subscriber = RecordingSubscriber()
        self.core.router.subscribe("c", subscriber)
        reply = await self.ask(tnetstring.dumps({b"method": b"recover"}))
        self.assertEqual((reply, subscriber.recovered), ({b"success": True, b"value": {}}, 1))
        for parts, condition in (((b"not a tnetstring",), b"bad-request"),
                                 ((b"0:~", b"two parts"), b"bad-request"),
                                 ((tnetstring.dumps({b"method": 5}),), b"bad-request"),
                                 ((tnetstring.dumps({b"method": b"conncheck"}),),
                                  b"method-not-found")):
            reply = await self.ask(*parts)
            self.assertEqual(reply, {b"success": False, b"condition": condition})
        reply = await self.ask(tnetstring.dumps({b"method": b"get-zmq-uris"}))
        self.assertTrue(reply[b"success"])
