"""The whole server as users run it: ``twistd -n fanout`` as a subprocess, a real origin
and a real WebSocket client on loopback, a publish through the HTTP publish API."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from tests.support.services import free_port
from tests.support.twistd import start_twistd, write_config
from tests.support.ws import ClientSide, WsOverHttpOrigin, grip_echo, listen_endpoint


class TwistdWebSocketTests(TestCase):
    timeout = 60
    workers = 1  # [runner] workers

    async def start_server(self) -> tuple[int, int]:
        self.origin = WsOverHttpOrigin(grip_echo)
        origin_port = await listen_endpoint().listen(Site(self.origin))
        self.addCleanup(origin_port.stopListening)
        client_port, publish_port = free_port(), free_port()
        folder = Path(self.mktemp())
        config = write_config(folder, (
            f"[runner]\nhttp_port=127.0.0.1:{client_port}\n"
            "[proxy]\nroutesfile=routes\n"
            "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
            f"push_in_http_addr=127.0.0.1\npush_in_http_port={publish_port}\n"
        ), routes=f"*,path_beg=/ws 127.0.0.1:{origin_port.getHost().port},over_http\n",
            workers=self.workers)
        _process, self.output = start_twistd(self, config)
        return client_port, publish_port

    async def connect(self, port: int) -> ClientSide:
        """Retry until the server listens (it starts in another process)."""
        deadline = reactor.seconds() + 20
        while True:
            if self.output.ended.called:
                self.fail(self.output.output.decode(errors="replace"))
            side = ClientSide(f"ws://127.0.0.1:{port}/ws/chat")
            try:
                await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(side)
                await side.opened
                return side
            except (ConnectionError, ConnectError):
                if reactor.seconds() > deadline:
                    self.fail(self.output.output.decode(errors="replace"))
            await deferLater(reactor, 0.1, lambda: None)

    async def test_subscribe_publish_close(self) -> None:
        """Through twistd: the origin subscribes the client with a c: control message, a
        POST to the publish API reaches the client, and the client's close reaches the
        origin as CLOSE."""
        client_port, publish_port = await self.start_server()
        side = await self.connect(client_port)
        side.client.sendMessage(b"sub:room")
        await side.wait_messages(1)
        pool = HTTPConnectionPool(reactor, persistent=False)
        body = json.dumps({"items": [{"channel": "room",
                                      "formats": {"ws-message": {"content": "hi all"}}}]})
        response = await Agent(reactor, pool=pool).request(
            b"POST", f"http://127.0.0.1:{publish_port}/publish/".encode(),
            Headers({"Content-Type": ["application/json"]}),
            FileBodyProducer(BytesIO(body.encode())))
        self.assertEqual(response.code, 200, await treq.content(response))
        messages = await side.wait_messages(2)
        self.assertEqual(messages, [(b"subscribed", False), (b"hi all", False)])
        side.client.sendClose(1000)
        await side.closed
        await self.origin.wait_for(lambda: "CLOSE" in self.origin.event_names())
        self.assertEqual(self.origin.requests[0][2], b"/ws/chat")


class TwistdWebSocketWorkersTests(TwistdWebSocketTests):
    """The same with two workers."""

    workers = 2
