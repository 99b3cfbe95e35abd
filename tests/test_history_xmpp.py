"""Built-in history on XMPP, end to end against a real Prosody: a client that comes back
and whose backend subscribes it with ``since`` gets exactly the messages it missed, in
order, then live ones; ``rewind`` replays the newest N; an id older than history replays
nothing."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from fanout_tx.core.history import MemoryHistory
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from tests.support.prosody import DOMAIN, Answer, ProsodyTestsMixin, header_value


def subscribe_as_asked(headers: Headers, body: bytes) -> Answer:
    """The message body says how to subscribe: ``live``, ``since ID`` or ``rewind N``."""
    if header_value(headers, "xmpp-kind") != "message":
        return 200, {}, b""
    text = body.decode()
    words = text[text.index("<body>") + 6:text.index("</body>")].split()
    entry: dict[str, object] = {"channel": "news"}
    if words[0] == "since":
        entry["since"] = words[1]
    elif words[0] == "rewind":
        entry["rewind"] = int(words[1])
    instruct = {"subscribe": [entry],
                "reply": ["<message type='chat'><body>subscribed</body></message>"]}
    return 200, {"Content-Type": "application/grip-instruct"}, json.dumps(instruct).encode()


class XmppHistoryTests(ProsodyTestsMixin, TestCase):
    def publish(self, router: Router, *numbers: int) -> None:
        for n in numbers:
            router.publish(parse_item({"channel": "news", "id": f"i{n}", "formats": {
                "xmpp-message": {"body": f"item {n}"}}}))

    async def bodies(self, client: object, count: int) -> list[str]:
        return [str((await client.next()).body) for _ in range(count)]  # type: ignore[attr-defined]

    async def test_since_and_rewind(self) -> None:
        """since: exactly the missed messages in order, then live ones; rewind: the newest
        N; an id older than history: live messages only."""
        backend, url = self.start_backend()
        backend.answer = subscribe_as_asked
        router = Router(reactor, history=MemoryHistory(reactor, 5))
        component = await self.start_component(router, url)
        alice = await self.login("alice")
        alice.send(f"<message to='news@{DOMAIN}' type='chat'><body>live</body></message>")
        self.assertEqual(await self.bodies(alice, 1), ["subscribed"])
        self.publish(router, 1, 2)
        self.assertEqual(await self.bodies(alice, 2), ["item 1", "item 2"])
        component.handler.subscriptions.drop(alice.jid.full(), "test: gone")
        self.publish(router, 3, 4)  # missed
        alice.send(f"<message to='news@{DOMAIN}' type='chat'><body>since i2</body></message>")
        got = await self.bodies(alice, 3)
        self.assertEqual(sorted(got[:3], key=lambda b: b != "subscribed")[1:], ["item 3",
                                                                                 "item 4"])
        self.publish(router, 5)
        self.assertEqual(await self.bodies(alice, 1), ["item 5"])

        bob = await self.login("bob")
        bob.send(f"<message to='news@{DOMAIN}' type='chat'><body>rewind 2</body></message>")
        got = await self.bodies(bob, 3)
        self.assertEqual([b for b in got if b != "subscribed"], ["item 4", "item 5"])
        component.handler.subscriptions.drop(bob.jid.full(), "test: gone")
        self.publish(router, 6, 7, 8, 9)  # i1 .. i4 are gone now
        bob.send(f"<message to='news@{DOMAIN}' type='chat'><body>since i1</body></message>")
        self.assertEqual(await self.bodies(bob, 1), ["subscribed"])
        self.publish(router, 10)
        self.assertEqual(await self.bodies(bob, 1), ["item 10"])
