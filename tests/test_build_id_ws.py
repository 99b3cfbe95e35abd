"""build-id on WebSocket-over-HTTP subscriptions (``c:subscribe`` with filters, meta from
``c:set-meta``). As in Pushpin 1.36 (checked with a private instance), a WebSocket
subscription has no prev ids: id_format is never rendered, ``%I`` is an error that drops
the message for that client, literal ``%(ID)I`` and ``%%`` work."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.formats.ws import parse_ws_message
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router
from fanout_tx.transports.ws import events as ev
from fanout_tx.transports.ws.grip import SessionOptions
from fanout_tx.transports.ws.session import WsOverHttpSession
from tests.support.ws_session import FakeEventsOrigin, FakeWsClient, control, reply


class WsBuildIdTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = Router(Clock())
        self.router.add_renderer("ws-message", lambda fmt: fmt.content)
        self.client = FakeWsClient()

    def open(self, id_format: str) -> WsOverHttpSession:
        origin = FakeEventsOrigin()
        session = WsOverHttpSession(origin, self.router, Clock(), SessionOptions())
        d = session.start()
        origin.answer(reply(
            ev.Event("OPEN"),
            control(json.dumps({"type": "set-meta", "name": "id_format", "value": id_format})),
            control('{"type":"subscribe","channel":"a","filters":["build-id"]}')))
        self.successResultOf(d)
        session.attach(self.client)
        return session

    def publish(self, content: str, item_id: str = "1") -> None:
        self.router.publish(Item("a", {"ws-message": parse_ws_message({"content": content})},
                                 id=item_id))

    def test_no_id_but_literals(self) -> None:
        for id_format in ("fixed", "%(a)s"):
            with self.subTest(id_format=id_format):
                self.client.sent.clear()
                session = self.open(id_format)
                for n, content in enumerate(("id=%I", "lit=%(x)I %%", "bad=%s")):
                    self.publish(content, f"{id_format}-{n}")
                self.assertEqual(self.client.sent, [("prepared", b"lit=x %")])
                self.router.unsubscribe_all(session)
