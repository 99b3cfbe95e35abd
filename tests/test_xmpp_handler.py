"""The component handler over an in-memory XML stream and an in-memory backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.words.xish import domish

from fanout_tx import wokkel_compat
from fanout_tx.core.formats.xmpp import parse_fragment
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.grip.signature import verify_hs256
from fanout_tx.transports.xmpp.backend import BackendClient
from fanout_tx.transports.xmpp.handler import ComponentHandler
from fanout_tx.transports.xmpp.render import StanzaRenderer

wokkel_compat.install()
from wokkel.test.helpers import XmlStreamStub  # noqa: E402 - needs wokkel_compat first

DOMAIN = "push.example"
ALICE = "alice@example/phone"
INSTRUCT = {"Content-Type": "application/grip-instruct"}
Answer = tuple[int, dict[str, str], bytes]


class Backend(Resource):
    """Records requests; answers with ``answer(request)``, or holds them when it is None."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []
        self.bodies: list[bytes] = []
        self.answer: Callable[[Any], Answer] | None = lambda _r: (200, {}, b"")

    def render_POST(self, request: Any) -> bytes | int:  # noqa: N802 - Resource hook
        self.requests.append(request)
        self.bodies.append(request.content.read())
        if self.answer is None:
            return NOT_DONE_YET
        code, headers, body = self.answer(request)
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body

    def header(self, name: str, index: int = -1) -> str | None:
        values = self.requests[index].requestHeaders.getRawHeaders(name)
        return values[0] if values else None


def _element(xml: str) -> domish.Element:
    """The one element in ``xml``, parsed as a publish is (component namespace)."""
    return parse_fragment(xml)[0]


def _as_received(xml: str) -> domish.Element:
    """The element as the XML stream delivers it: domish alone, no publish-side checks."""
    elements: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda _root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(f"<stream xmlns='jabber:component:accept'>{xml}</stream>".encode())
    return elements[0]


def _instruct(**document: Any) -> Answer:
    return 200, INSTRUCT, json.dumps(document).encode()


class HandlerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backend = Backend()
        self.agent = RequestTraversalAgent(self.backend)
        self.router = Router(self.clock)
        renderer = StanzaRenderer(DOMAIN)
        renderer.install(self.router)
        client = BackendClient(self.agent, self.clock, "http://backend/xmpp", 5,
                               "fanout", b"secret")
        self.handler = ComponentHandler(renderer, client, self.router, max_channels=20)
        self.stub = XmlStreamStub()
        self.handler.makeConnection(self.stub.xmlstream)
        self.handler.connectionInitialized()

    def receive(self, xml: str) -> None:
        self.stub.send(_element(xml))
        self.agent.flush()

    def sent(self) -> list[domish.Element]:
        return [o if isinstance(o, domish.Element) else _element(o.decode())
                for o in self.stub.output]

    def iq(self, iq_type: str = "get", child: str = "<q xmlns='urn:q'/>",
           to: str = f"bot@{DOMAIN}") -> domish.Element:
        self.receive(f"<iq type='{iq_type}' id='i1' from='{ALICE}' to='{to}'>{child}</iq>")
        [answer] = self.sent()
        self.assertEqual((answer.name, answer["id"], answer["to"]), ("iq", "i1", ALICE))
        return answer

    def assert_error(self, answer: domish.Element, condition: str, error_type: str) -> None:
        self.assertEqual(answer["type"], "error")
        self.assertEqual((answer.error["type"], next(answer.error.elements()).name),
                         (error_type, condition))

    # -- answered locally -----------------------------------------------------------------

    def test_disco_info_and_ping(self) -> None:
        """disco#info and ping are answered by the component; the backend sees neither."""
        disco = self.iq(child="<query xmlns='http://jabber.org/protocol/disco#info'/>")
        self.assertEqual(disco["type"], "result")
        features = {f["var"] for f in disco.query.elements() if f.name == "feature"}
        self.assertEqual(features, {"http://jabber.org/protocol/disco#info", "urn:xmpp:ping"})
        self.stub.output.clear()
        self.assertEqual(self.iq(child="<ping xmlns='urn:xmpp:ping'/>")["type"], "result")
        self.assertEqual(self.backend.requests, [])

    # -- the backend request ----------------------------------------------------------------

    def test_backend_request(self) -> None:
        """The stanza is POSTed with the Xmpp-* headers, meta and a valid Grip-Sig."""
        meta = {"set-meta": {"user": "a"}}
        self.backend.answer = lambda _r: _instruct(subscribe=["news"], **meta)
        self.receive(f"<message from='{ALICE}' to='bot@{DOMAIN}' type='chat'><body>hi</body>"
                     "</message>")
        self.assertEqual(
            [self.backend.header(n) for n in ("content-type", "xmpp-kind", "xmpp-from",
                                              "xmpp-to", "xmpp-type", "meta-user")],
            ["application/xmpp+xml", "message", ALICE, f"bot@{DOMAIN}", "chat", None],
        )
        claims = verify_hs256(self.backend.header("grip-sig"), b"secret", self.clock.seconds())
        self.assertEqual(claims["iss"], "fanout")
        self.assertIn(b"<body>hi</body>", self.backend.bodies[0])
        self.receive(f"<presence from='{ALICE}' to='{DOMAIN}'/>")
        self.assertEqual((self.backend.header("meta-user"), self.backend.header("xmpp-type")),
                         ("a", None))

    def test_subscribe_reply_and_publish(self) -> None:
        """Grip-Channel subscribes the sender's full JID; replies get to and from filled in;
        a publish reaches the JID."""
        self.backend.answer = lambda _r: (200, {"Grip-Channel": "news"}, b"")
        self.receive(f"<presence from='{ALICE}' to='{DOMAIN}'/>")
        self.backend.answer = lambda _r: _instruct(reply=[
            "<message><body>welcome</body></message>",
            f"<message from='other@{DOMAIN}'><body>kept</body></message>",
            "<message from='x@elsewhere'><body>replaced</body></message>"])
        self.receive(f"<message from='{ALICE}' to='bot@{DOMAIN}'><body>hi</body></message>")
        replies = self.sent()
        self.assertEqual([(r["to"], r["from"]) for r in replies],
                         [(ALICE, f"bot@{DOMAIN}"), (ALICE, f"other@{DOMAIN}"),
                          (ALICE, f"bot@{DOMAIN}")])
        self.stub.output.clear()
        self.router.publish(parse_item({"channel": "news",
                                        "formats": {"xmpp-message": {"body": "news!"}}}))
        [push] = self.sent()
        self.assertEqual((push["to"], push["from"], str(push.body)), (ALICE, DOMAIN, "news!"))

    def test_backend_unsubscribe(self) -> None:
        self.backend.answer = lambda _r: (200, {"Grip-Channel": "news, sport"}, b"")
        self.receive(f"<presence from='{ALICE}' to='{DOMAIN}'/>")
        self.backend.answer = lambda _r: _instruct(unsubscribe=["news"])
        self.receive(f"<message from='{ALICE}' to='{DOMAIN}'/>")
        self.assertEqual(self.handler.subscriptions.channels_of(ALICE), frozenset({"sport"}))

    # -- iq answers -------------------------------------------------------------------------

    def test_iq_result(self) -> None:
        """An iq reply becomes the result (id, type, to, from set by the server); without
        one a 200 gives an empty result."""
        self.backend.answer = lambda _r: _instruct(reply=[
            "<iq type='set' id='bogus' to='x@y'><r xmlns='urn:r'>42</r></iq>"])
        result = self.iq()
        self.assertEqual((result["type"], result["from"], str(result.r)),
                         ("result", f"bot@{DOMAIN}", "42"))
        self.stub.output.clear()
        self.backend.answer = lambda _r: (200, {}, b"")
        result = self.iq("set")
        self.assertEqual((result["type"], list(result.elements())), ("result", []))

    def test_iq_errors(self) -> None:
        """403 forbidden, 404 item-not-found, other 4xx bad-request, 5xx and malformed
        answers service-unavailable (wait)."""
        for code, body, condition, error_type in (
            (403, b"", "forbidden", "auth"),
            (404, b"", "item-not-found", "cancel"),
            (409, b"", "bad-request", "modify"),
            (502, b"", "service-unavailable", "wait"),
            (200, b"{not json", "service-unavailable", "wait"),
        ):
            self.stub.output.clear()
            self.backend.answer = lambda _r, c=code, b=body: (c, INSTRUCT, b)
            self.assert_error(self.iq(), condition, error_type)

    def test_iq_timeout(self) -> None:
        """A backend that does not answer within backend_timeout: service-unavailable."""
        self.backend.answer = None
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.receive(f"<iq type='get' id='i1' from='{ALICE}' to='{DOMAIN}'><q xmlns='urn:q'/></iq>")
        self.assertEqual(self.sent(), [])
        self.clock.advance(5)
        [answer] = self.sent()
        self.assert_error(answer, "service-unavailable", "wait")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("backend did not answer within 5", " ".join(
            str(e.get("reason", "")) for e in logged))

    def test_timeout_while_reading_the_answer_closes_the_connection(self) -> None:
        """A backend that sends its headers and part of a body, then stalls: at the timeout
        the iq gets service-unavailable and the backend connection is closed."""
        self.backend.answer = None
        self.receive(f"<iq type='get' id='i1' from='{ALICE}' to='{DOMAIN}'><q xmlns='urn:q'/></iq>")
        [held] = self.backend.requests
        lost = held.notifyFinish()
        held.setHeader("Content-Type", "application/grip-instruct")
        held.write(b'{"reply": [')
        self.agent.flush()
        self.clock.advance(5)
        self.agent.flush()
        [answer] = self.sent()
        self.assert_error(answer, "service-unavailable", "wait")
        self.failureResultOf(lost)

    def test_iq_results_and_errors_are_forwarded_unanswered(self) -> None:
        """They answer an iq a backend pushed to the JID, so the backend gets them; the
        component sends nothing back (an iq result or error is never answered)."""
        for iq_type in ("result", "error"):
            self.receive(f"<iq type='{iq_type}' id='x' from='{ALICE}' to='{DOMAIN}'/>")
            self.assertEqual(self.backend.header("Xmpp-Type"), iq_type)
            self.assertEqual(self.backend.header("Xmpp-Kind"), "iq")
        self.assertEqual((self.sent(), len(self.backend.requests)), ([], 2))

    def test_stanza_domish_cannot_write_is_dropped(self) -> None:
        """A namespace URI with ``&`` (domish writes it unescaped) or nesting past 64: not
        forwarded, and an iq's error answer does not echo it, so the XML the component sends
        stays well-formed and the server keeps the link."""
        self.stub.send(_as_received(f"<iq type='set' id='i1' from='{ALICE}' to='bot@{DOMAIN}'>"
                                    "<q xmlns='u&amp;v'/></iq>"))
        [answer] = self.sent()
        self.assert_error(answer, "bad-request", "modify")
        self.assertEqual([c.name for c in answer.elements()], ["error"])
        _element(answer.toXml())  # well-formed
        self.stub.output.clear()
        # with a bad sender too: no jid-malformed error, which would copy the child
        self.stub.send(_as_received("<iq type='get' id='i2' from='a@@b' to='bot@push.test'>"
                                    "<q xmlns=\"u'v\"/></iq>"))
        [answer] = self.sent()
        self.assertEqual([c.name for c in answer.elements()], ["error"])
        _element(answer.toXml())
        self.stub.output.clear()
        self.stub.send(_as_received(f"<message from='{ALICE}' to='bot@{DOMAIN}'>"
                                    f"{'<a>' * 70}{'</a>' * 70}</message>"))
        self.agent.flush()
        self.assertEqual((self.sent(), self.backend.requests), ([], []))

    def test_unwritable_departure_still_unsubscribes(self) -> None:
        """Unavailable presence that cannot be forwarded still ends the subscriptions."""
        self.subscribe_alice()
        self.stub.send(_as_received(f"<presence type='unavailable' from='{ALICE}' "
                                    f"to='{DOMAIN}'><x xmlns='a&amp;b'/></presence>"))
        self.assertIsNone(self.handler.subscriptions.get(ALICE))
        self.assertEqual(self.router.subscriber_count(), 0)

    def test_wrong_domain_or_bad_address(self) -> None:
        """Stanzas not for this domain, or without a usable from/to, never reach the
        backend; an iq still gets its one error."""
        self.assert_error(self.iq(to="bot@elsewhere"), "item-not-found", "cancel")
        self.stub.output.clear()
        self.receive(f"<iq type='get' id='i2' to='{DOMAIN}'><q xmlns='urn:q'/></iq>")
        [answer] = self.sent()
        self.assert_error(answer, "jid-malformed", "modify")
        self.receive(f"<message from='a@@b' to='{DOMAIN}'/>")
        self.assertEqual(len(self.sent()), 1)
        self.assertEqual(self.backend.requests, [])

    def test_message_backend_failure_is_logged(self) -> None:
        """For message/presence a backend error is logged, nothing is sent back."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.backend.answer = lambda _r: (500, {}, b"")
        self.receive(f"<message from='{ALICE}' to='{DOMAIN}'/>")
        self.assertEqual(self.sent(), [])
        self.assertIn("backend answered 500", [e.get("reason") for e in events])

    # -- subscriptions end --------------------------------------------------------------------

    def subscribe_alice(self) -> None:
        self.backend.answer = lambda _r: (200, {"Grip-Channel": "news"}, b"")
        self.receive(f"<presence from='{ALICE}' to='{DOMAIN}'/>")
        self.assertIsNotNone(self.handler.subscriptions.get(ALICE))

    def test_unavailable_ends_subscriptions(self) -> None:
        """Unavailable presence unsubscribes, is still POSTed, and its answer cannot
        subscribe again."""
        self.subscribe_alice()
        self.receive(f"<presence type='unavailable' from='{ALICE}' to='{DOMAIN}'/>")
        self.assertEqual(self.backend.header("xmpp-type"), "unavailable")
        self.assertIsNone(self.handler.subscriptions.get(ALICE))
        self.assertEqual(self.router.subscriber_count(), 0)

    def test_late_answer_cannot_undo_unavailable(self) -> None:
        """An answer to an earlier presence that arrives after the JID left does not
        subscribe it again."""
        self.backend.answer = None
        self.receive(f"<presence from='{ALICE}' to='{DOMAIN}'/>")
        self.receive(f"<presence type='unavailable' from='{ALICE}' to='{DOMAIN}'/>")
        held = self.backend.requests[0]
        held.setHeader("Grip-Channel", "news")
        self.backend.answer = lambda _r: (200, {}, b"")
        held.finish()
        self.agent.flush()
        self.assertEqual(self.backend.header("xmpp-type"), "unavailable")
        self.assertIsNone(self.handler.subscriptions.get(ALICE))
        self.assertEqual(self.router.subscriber_count(), 0)

    def test_iq_error_ends_subscriptions(self) -> None:
        self.subscribe_alice()
        self.receive(f"<iq type='error' id='x' from='{ALICE}' to='{DOMAIN}'/>")
        self.assertIsNone(self.handler.subscriptions.get(ALICE))

    def test_error_bounce_ends_subscriptions(self) -> None:
        self.subscribe_alice()
        self.receive(f"<message type='error' from='{ALICE}' to='{DOMAIN}'>"
                     "<error type='cancel'><service-unavailable "
                     "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        self.assertIsNone(self.handler.subscriptions.get(ALICE))

    # -- ordering and the link ----------------------------------------------------------------

    def test_one_backend_call_at_a_time_per_jid(self) -> None:
        """A JID's stanzas reach the backend in order, one at a time; others are not held
        up."""
        self.backend.answer = None
        for n in range(3):
            self.receive(f"<message id='m{n}' from='{ALICE}' to='{DOMAIN}'/>")
        self.receive(f"<message from='bob@example/pc' to='{DOMAIN}'/>")
        self.assertEqual(len(self.backend.requests), 2)
        idle = self.handler.when_idle()
        first = self.backend.requests[0]
        first.finish()
        self.agent.flush()
        self.assertEqual(len(self.backend.requests), 3)
        self.assertIn(b"id='m1'", self.backend.bodies[2].replace(b'"', b"'"))
        for request in self.backend.requests[1:]:
            request.finish()
        self.agent.flush()
        self.assertNoResult(idle)
        self.backend.requests[-1].finish()
        self.agent.flush()
        self.assertEqual(len(self.backend.requests), 4)
        self.successResultOf(idle)

    def test_pushes_while_link_down_are_dropped(self) -> None:
        self.subscribe_alice()
        self.handler.connectionLost(None)
        self.router.publish(parse_item({"channel": "news",
                                        "formats": {"xmpp-message": {"body": "x"}}}))
        self.assertEqual((self.stub.output, self.handler.link.unsent), ([], {"link_down": 1}))
