"""Built-in history on webhooks, through real sockets: a subscription created with ``since``
or ``rewind`` gets the backlog from history first, in order, then live items."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from tests.support.helpers import wait_until
from tests.support.ops_fixtures import Server
from tests.support.webhooks import Receiver
from tests.support.ws import listen_endpoint


class WebhookBacklogTests(TestCase):
    timeout = 30

    async def start(self) -> tuple[Server, Receiver]:
        # One delivery in flight per subscription: arrival order is send order.
        server = await Server(self).start("[history]\nmax_items=5\n[webhooks]\nmax_in_flight=1\n",
                                          webhooks=True)
        receiver = Receiver()
        port = await listen_endpoint().listen(Site(receiver))
        self.addCleanup(port.stopListening)
        receiver.url = f"http://127.0.0.1:{port.getHost().port}/hook"
        return server, receiver

    async def publish(self, server: Server, *numbers: int) -> None:
        items = [{"channel": "room", "id": f"i{n}",
                  "formats": {"http-request": {"body": f"item {n}"}}} for n in numbers]
        code, body = await server.post_json("/publish/", {"items": items})
        self.assertEqual(code, 200, body)

    async def subscribe(self, server: Server, receiver: Receiver, **extra: Any) -> None:
        code, body = await server.post_json("/webhooks/subscriptions", {
            "url": receiver.url, "channels": ["room"], "verify": False, **extra})
        self.assertEqual(code, 201, body)

    def bodies(self, receiver: Receiver) -> list[bytes]:
        return [r.body for r in receiver.requests]

    async def test_since(self) -> None:
        """``since``: the items after it, in order, then live ones; each once."""
        server, receiver = await self.start()
        await self.publish(server, 1, 2, 3)
        await self.subscribe(server, receiver, since="i1")
        await wait_until(lambda: len(receiver.requests) >= 2)
        await self.publish(server, 4)
        await wait_until(lambda: len(receiver.requests) >= 3)
        self.assertEqual(self.bodies(receiver), [b"item 2", b"item 3", b"item 4"])

    async def test_rewind_and_refusals(self) -> None:
        """``rewind``: the newest N first; a bad since/rewind is a 400 naming it."""
        server, receiver = await self.start()
        await self.publish(server, 1, 2, 3)
        await self.subscribe(server, receiver, rewind=2)
        await wait_until(lambda: len(receiver.requests) >= 2)
        self.assertEqual(self.bodies(receiver), [b"item 2", b"item 3"])
        for extra, reason in (({"rewind": -1}, b"rewind must be"),
                              ({"since": 5}, b"since must be")):
            code, body = await server.post_json("/webhooks/subscriptions", {
                "url": receiver.url, "channels": ["room"], "verify": False, **extra})
            self.assertEqual(code, 400)
            self.assertIn(reason, body)
