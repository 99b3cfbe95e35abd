"""Oversized inbound stanzas (issue #13): a real Prosody, real XMPP clients and the
component. A stanza over ``[xmpp] max_stanza_size`` is dropped unbuilt and its sender gets
``policy-violation``, while the link and everyone else go on; one over Prosody's own c2s
limit (256 KiB) never reaches the component. The parser's bound is checked directly too."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.words.xish import domish

from fanout_tx.core.router import Router
from fanout_tx.transports.xmpp.bounded_stream import TOKEN_SLACK, BoundedElementStream
from fanout_tx.transports.xmpp.serial import KeyedSerializer
from tests.support.prosody import DOMAIN, ProsodyTestsMixin, subscribe_and_echo

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
BIG = "x" * 100_000  # over the 64 KiB default, under Prosody's 256 KiB
T = TypeVar("T")


def within(work: Coroutine[Any, Any, T], seconds: float = 10) -> Deferred[T]:
    return Deferred.fromCoroutine(work).addTimeout(seconds, reactor)


def _condition(stanza: domish.Element) -> str | None:
    error = next((e for e in stanza.elements() if e.name == "error"), None)
    if error is None:
        return None
    return next((e.name for e in error.elements() if e.uri == NS_STANZAS and e.name != "text"),
                None)


class OversizedStanzaTests(ProsodyTestsMixin, TestCase):
    async def test_oversized_stanzas_are_refused_and_the_link_goes_on(self) -> None:
        """A 100 kB message and iq: each sender gets policy-violation, the backend sees
        neither, the count shows both; the next small message is served as usual."""
        backend, url = self.start_backend()
        backend.answer = subscribe_and_echo
        component = await self.start_component(Router(reactor), url)
        alice, bob = await self.login("alice"), await self.login("bob")
        alice.send(f"<message to='news@{DOMAIN}' id='m1' type='chat'><body>{BIG}</body>"
                   "</message>")
        bounce = await within(alice.next())
        self.assertEqual((bounce["type"], bounce["from"], bounce.getAttribute("id")),
                         ("error", f"news@{DOMAIN}", "m1"))
        self.assertEqual(_condition(bounce), "policy-violation")
        query = domish.Element(("urn:example:big", "query"))
        query.addContent(BIG)
        answer = await within(alice.iq("set", f"news@{DOMAIN}", query))
        self.assertEqual((answer["type"], _condition(answer)), ("error", "policy-violation"))
        self.assertEqual(component.link.oversized, 2)
        self.assertTrue(component.link.up)
        self.assertEqual(backend.requests.pending, [])
        for client in (bob, alice):
            client.send(f"<message to='news@{DOMAIN}' type='chat'><body>hi</body></message>")
            reply = await within(client.next())
            self.assertEqual(str(reply.body), "subscribed")

    async def test_configured_cap(self) -> None:
        """``[xmpp] max_stanza_size`` sets the cap: 5 kB is over a 4 KiB one."""
        backend, url = self.start_backend()
        component = await self.start_component(Router(reactor), url, max_stanza_size=4096)
        alice = await self.login("alice")
        alice.send(f"<message to='news@{DOMAIN}' type='chat'><body>{'z' * 5000}</body>"
                   "</message>")
        self.assertEqual(_condition(await within(alice.next())), "policy-violation")
        self.assertEqual(component.link.oversized, 1)

    async def test_over_prosody_limit_never_reaches_the_component(self) -> None:
        """Past Prosody's c2s_stanza_size_limit (256 KiB) Prosody closes the sender's
        stream itself; the component never sees the stanza and its link stays up."""
        backend, url = self.start_backend()
        backend.answer = subscribe_and_echo
        component = await self.start_component(Router(reactor), url)
        alice, bob = await self.login("alice"), await self.login("bob")
        alice.send(f"<message to='news@{DOMAIN}' type='chat'><body>{'y' * 300_000}</body>"
                   "</message>")
        await alice._lost.addTimeout(10, reactor)  # noqa: SLF001 - the client's end
        self.assertEqual(component.link.oversized, 0)
        bob.send(f"<message to='news@{DOMAIN}' type='chat'><body>hi</body></message>")
        self.assertEqual(str((await within(bob.next())).body), "subscribed")
        self.assertTrue(component.link.up)


class BoundedElementStreamTests(SynchronousTestCase):
    """The parser on its own: what it keeps in memory while a huge stanza streams by."""

    def setUp(self) -> None:
        self.oversized: list[tuple[domish.Element, int]] = []
        self.stanzas: list[domish.Element] = []
        self.stream = BoundedElementStream(1000, lambda head, size: self.oversized.append(
            (head, size)))
        self.stream.DocumentStartEvent = lambda _root: None
        self.stream.ElementEvent = self.stanzas.append
        self.stream.DocumentEndEvent = lambda: None
        self.stream.parse(b"<stream:stream xmlns='jabber:component:accept' "
                          b"xmlns:stream='http://etherx.jabber.org/streams'>")

    def test_a_huge_stanza_is_skipped_not_built(self) -> None:
        """10 MB in 4 KB reads: nothing of it is kept past the cap (no element grows), its
        head is reported with its size, and the next stanza is parsed as usual."""
        self.stream.parse(b"<message from='a@x/r' to='b@y' id='1'><body>")
        for _ in range(2500):
            self.stream.parse(b"<b>" + b"z" * 4089 + b"</b>")
            self.assertIsNone(self.stream.currElem)
        self.stream.parse(b"</body></message><message to='b@y'><body>ok</body></message>")
        [(head, size)] = self.oversized
        self.assertEqual((head.name, head["id"], head.children), ("message", "1", []))
        self.assertGreater(size, 10_000_000)
        self.assertEqual([str(s.body) for s in self.stanzas], ["ok"])

    def test_just_over_the_cap_in_one_read(self) -> None:
        """A stanza that ends in the read that takes it over the cap is refused too."""
        self.stream.parse(b"<iq type='set' id='2'><q>" + b"a" * 1200 + b"</q></iq>")
        self.assertEqual([h["id"] for h, _size in self.oversized], ["2"])
        self.assertEqual(self.stanzas, [])

    def test_an_endless_tag_ends_the_stream(self) -> None:
        """A tag that never closes would be buffered whole by expat: past the cap and the
        slack it is a parser error (the link answers with a stream error)."""
        self.stream.parse(b"<message a='")
        with self.assertRaises(domish.ParserError):
            for _ in range(TOKEN_SLACK // 65536 + 2):
                self.stream.parse(b"q" * 65536)


class SerializerBoundTests(SynchronousTestCase):
    def test_all_keys_together_are_bounded(self) -> None:
        """Many JIDs with one stanza each cannot add up past the total: the next one is
        refused until a job ends."""
        serial = KeyedSerializer(max_queued=32, max_total=3)
        jobs: list[Deferred[None]] = []

        def job() -> Deferred[None]:
            jobs.append(Deferred())
            return jobs[-1]

        self.assertEqual([serial.submit(f"jid{n}", job) for n in range(4)],
                         [True, True, True, False])
        self.assertFalse(serial.submit("jid0", job))  # waiting counts too
        jobs[0].callback(None)
        self.assertTrue(serial.submit("jid9", job))
