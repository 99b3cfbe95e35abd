"""WebSocket-over-HTTP session logic with a fake origin, a fake client and task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from fanout_tx.core.formats.ws import parse_ws_message
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router
from fanout_tx.transports.ws import events as ev
from fanout_tx.transports.ws.grip import Accepted, Rejected, SessionOptions, WsClient
from fanout_tx.transports.ws.session import (
    OriginError,
    OriginReply,
    WsOverHttpSession,
)
from tests.support.ws_session import EVENTS, GRIP, FakeEventsOrigin, FakeWsClient, control, reply


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(self.clock)
        self.origin = FakeEventsOrigin()
        self.client = FakeWsClient()

    def open(self, first: OriginReply | None = None, **options: Any) -> WsOverHttpSession:
        """A new session on a new FakeEventsOrigin (``self.origin``), accepted and attached."""
        self.origin = FakeEventsOrigin()
        session = WsOverHttpSession(self.origin, self.router, self.clock,
                                    SessionOptions(**options))
        outcome = self.successResultOf(self._start(session, first or reply(ev.Event("OPEN"))))
        self.assertIsInstance(outcome, Accepted)
        session.attach(self.client)
        return session

    def _start(self, session: WsOverHttpSession, first: OriginReply) -> Deferred:
        d = session.start()
        self.assertEqual(self.origin.events(0), [ev.Event("OPEN")])
        self.origin.answer(first, 0)
        return d

    def test_provides_isubscriber(self) -> None:
        session = WsOverHttpSession(self.origin, self.router, self.clock)
        self.assertTrue(verifyObject(ISubscriber, session))
        members = {n for n in vars(WsClient) if not n.startswith("_")}
        self.assertEqual(members - set(dir(FakeWsClient)), set())

    def test_rejection(self) -> None:
        """A non-events answer to OPEN is a Rejected carrying the origin's answer."""
        session = WsOverHttpSession(self.origin, self.router, self.clock)
        outcome = self.successResultOf(self._start(
            session, OriginReply(401, b"Unauthorized", (("X-A", "1"),), b"no")))
        self.assertEqual(outcome, Rejected(401, b"Unauthorized", (("X-A", "1"),), b"no"))
        self.assertTrue(session.finished.called)

    def test_first_reply_without_open_fails(self) -> None:
        session = WsOverHttpSession(self.origin, self.router, self.clock)
        failure = self.failureResultOf(self._start(session, reply(ev.Event("TEXT", b"m:x"))),
                                       OriginError)
        self.assertIn("OPEN", failure.getErrorMessage())

    def test_accepted_headers_hide_private_ones(self) -> None:
        """The 101 gets the origin's headers minus Content-Type, Set-Meta-*,
        Keep-Alive-Interval and the grip extension; the subprotocol is passed on."""
        session = WsOverHttpSession(self.origin, self.router, self.clock)
        outcome = self.successResultOf(self._start(session, reply(
            ev.Event("OPEN"), headers=(EVENTS, GRIP, ("Set-Meta-User", "u"),
                                       ("Keep-Alive-Interval", "30"), ("Set-Cookie", "a=1"),
                                       ("Sec-WebSocket-Protocol", "chat")))))
        self.assertEqual(outcome, Accepted("chat", {"Set-Cookie": ["a=1"]}))

    def test_batching_one_request_at_a_time(self) -> None:
        """Messages arriving during a round trip go together in the next request."""
        session = self.open()
        session.client_message(b"a", False)
        session.client_message(b"b", True)
        session.client_message(b"c", False)
        self.assertEqual(len(self.origin.requests), 2)
        self.assertEqual(self.origin.events(), [ev.Event("TEXT", b"a")])
        self.origin.answer(reply())
        self.assertEqual(self.origin.events(), [ev.Event("BINARY", b"b"), ev.Event("TEXT", b"c")])

    def test_one_event(self) -> None:
        """one_event: one event per request."""
        session = self.open(one_event=True)
        for payload in (b"a", b"b", b"c"):
            session.client_message(payload, False)
        self.origin.answer(reply())
        self.assertEqual(self.origin.events(), [ev.Event("TEXT", b"b")])
        self.origin.answer(reply())
        self.assertEqual(self.origin.events(), [ev.Event("TEXT", b"c")])

    def test_grip_prefix_and_passthrough(self) -> None:
        """With grip, only m:-prefixed messages reach the client (stripped); without grip,
        everything passes verbatim."""
        session = self.open()
        session.client_message(b"x", False)
        self.origin.answer(reply(ev.Event("TEXT", b"m:yes"), ev.Event("TEXT", b"no"),
                                 ev.Event("BINARY", b"m:\x00"), ev.Event("PING", b"p")))
        self.assertEqual(self.client.sent, [("text", b"yes"), ("binary", b"\x00"),
                                            ("ping", b"p")])
        other = FakeWsClient()
        self.client = other
        self.open(reply(ev.Event("OPEN"), ev.Event("TEXT", b"c:raw"), headers=(EVENTS,)))
        self.assertEqual(other.sent, [("text", b"c:raw")])

    def test_custom_prefix(self) -> None:
        self.open(reply(ev.Event("OPEN"), ev.Event("TEXT", b">>hi"), ev.Event("TEXT", b"m:no"),
                        headers=(EVENTS, ("Sec-WebSocket-Extensions",
                                          'grip; message-prefix=">>"'))))
        self.assertEqual(self.client.sent, [("text", b"hi")])

    def test_subscribe_publish_unsubscribe(self) -> None:
        """c: subscribe/unsubscribe act on the router with the route's channel prefix; a
        publish reaches the client as the prepared message."""
        session = self.open(reply(ev.Event("OPEN"), control('{"type":"subscribe","channel":"a"}')),
                            channel_prefix="p-")
        self.assertEqual(self.router.channels_of(session), {"p-a"})
        self.router.add_renderer("ws-message", lambda fmt: ("PREPARED", fmt.content))
        self.router.publish(Item("p-a", {"ws-message": parse_ws_message({"content": "hi"})}))
        self.assertEqual(self.client.sent, [("prepared", ("PREPARED", b"hi"))])
        session.client_message(b"x", False)
        self.origin.answer(reply(control('{"type":"unsubscribe","channel":"a"}')))
        self.assertEqual(self.router.channels_of(session), frozenset())

    def test_sub_option_and_subscription_limit(self) -> None:
        """sub= subscribes at open; subscriptions past the limit are refused."""
        session = self.open(reply(ev.Event("OPEN"), control('{"type":"subscribe","channel":"b"}'),
                                  control('{"type":"subscribe","channel":"c"}')),
                            subscriptions=("a",), max_subscriptions=2)
        self.assertEqual(self.router.channels_of(session), {"a", "b"})

    def test_published_close_and_ping(self) -> None:
        session = self.open(subscriptions=("a",))
        self.router.publish(Item("a", {"ws-message": parse_ws_message({"type": "ping"})}))
        self.router.publish(Item("a", {"ws-message": parse_ws_message(
            {"action": "close", "code": 4001, "reason": "bye"})}))
        self.assertEqual(self.client.sent, [("ping", b"")])
        self.assertEqual(self.client.closed, (4001, "bye"))
        session.client_closed(4001, "bye")  # the client's reply, as the protocol reports it
        self.assertEqual(self.origin.events(), [ev.Event("CLOSE", ev.close_content(4001, "bye"))])
        self.assertFalse(self.router.has_subscribers("a"))
        self.origin.answer(reply())
        self.assertTrue(session.finished.called)

    def test_set_meta_headers_and_control(self) -> None:
        """Set-Meta-* come back as Meta-* (empty deletes); set-meta control sets the
        subscription meta that filters read."""
        session = self.open(reply(ev.Event("OPEN"), control(
            '{"type":"set-meta","name":"user","value":"ann"}'),
            headers=(EVENTS, GRIP, ("Set-Meta-A", "1"), ("Set-Meta-B", "2"))))
        self.assertEqual(session.meta, {"user": "ann"})
        session.client_message(b"x", False)
        self.assertEqual(self.origin.requests[-1][1], {"A": "1", "B": "2"})
        self.origin.answer(reply(headers=(EVENTS, ("Set-Meta-A", ""))))
        session.client_message(b"y", False)
        self.assertEqual(self.origin.requests[-1][1], {"B": "2"})

    def test_keep_alive_interval(self) -> None:
        """Keep-Alive-Interval asks for an empty request after that many idle seconds
        (at least 20, as Pushpin)."""
        session = self.open(reply(ev.Event("OPEN"),
                                  headers=(EVENTS, ("Keep-Alive-Interval", "5"))))
        self.clock.advance(19)
        self.assertEqual(len(self.origin.requests), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.origin.requests), 2)
        self.assertEqual(self.origin.events(), [])
        self.origin.answer(reply(headers=(EVENTS,)))
        self.clock.advance(20)
        self.assertEqual(len(self.origin.requests), 3)
        session.client_closed(1000, "")
        self.origin.answer(reply(), 2)
        self.origin.answer(reply())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(session.finished.called)

    def test_client_keep_alive_idle_and_interval(self) -> None:
        """keep-alive control: idle mode restarts on every message to the client;
        interval mode does not."""
        session = self.open(reply(ev.Event("OPEN"), control(
            '{"type":"keep-alive","content":"ka","timeout":10}')))
        self.clock.advance(9)
        session.client_message(b"x", False)
        self.origin.answer(reply(ev.Event("TEXT", b"m:reply")))
        self.clock.advance(9)
        self.assertEqual(self.client.sent, [("text", b"reply")])
        self.clock.advance(1)
        self.assertEqual(self.client.sent[-1], ("text", b"ka"))
        session.client_message(b"x", False)
        self.origin.answer(reply(control(
            '{"type":"keep-alive","content-bin":"AAE=","timeout":5,"mode":"interval"}'),
            ev.Event("TEXT", b"m:r2")))
        self.clock.advance(5)
        self.assertEqual(self.client.sent[-2:], [("text", b"r2"), ("binary", b"\x00\x01")])
        session.client_message(b"x", False)
        self.origin.answer(reply(control('{"type":"keep-alive"}')))
        self.clock.advance(60)
        self.assertEqual(self.client.sent[-1], ("binary", b"\x00\x01"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_send_delayed_and_flush(self) -> None:
        """send-delayed goes out after its timeout; flush-delayed sends it at once; a new
        send-delayed first sends the pending one."""
        session = self.open(reply(ev.Event("OPEN"), control(
            '{"type":"send-delayed","content":"one","timeout":5}')))
        self.clock.advance(5)
        self.assertEqual(self.client.sent, [("text", b"one")])
        session.client_message(b"x", False)
        self.origin.answer(reply(
            control('{"type":"send-delayed","content":"two","timeout":5}'),
            control('{"type":"send-delayed","content-bin":"AAE=","timeout":5}')))
        self.assertEqual(self.client.sent[-1], ("text", b"two"))
        session.client_message(b"x", False)
        self.origin.answer(reply(control('{"type":"flush-delayed"}')))
        self.assertEqual(self.client.sent[-1], ("binary", b"\x00\x01"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_detach(self) -> None:
        """detach: the origin hears CLOSE and nothing more; subscriptions and the client
        stay; client messages are dropped."""
        session = self.open(reply(ev.Event("OPEN"), control(
            '{"type":"subscribe","channel":"a"}'), control('{"type":"detach"}')))
        self.assertEqual(self.origin.events(), [ev.Event("CLOSE")])
        self.origin.answer(reply())
        session.client_message(b"ignored", False)
        self.assertEqual(len(self.origin.requests), 2)
        self.assertTrue(self.router.has_subscribers("a"))
        self.assertFalse(session.finished.called)
        session.client_lost()
        self.assertFalse(self.router.has_subscribers("a"))
        self.assertTrue(session.finished.called)

    def test_client_lost_is_disconnect(self) -> None:
        """A vanished client becomes DISCONNECT, after the round trip in flight."""
        session = self.open()
        session.client_message(b"a", False)
        session.client_lost()
        self.origin.answer(reply(ev.Event("TEXT", b"m:late")))
        self.assertEqual(self.origin.events(), [ev.Event("DISCONNECT")])
        self.assertEqual(self.client.sent, [])
        self.origin.answer(reply())
        self.assertTrue(session.finished.called)

    def test_origin_close_and_disconnect(self) -> None:
        """Origin CLOSE closes the client with its code, and the client's close reply goes
        back as CLOSE (as Pushpin); DISCONNECT aborts the client and nothing goes back."""
        session = self.open(reply(ev.Event("OPEN"),
                                  ev.Event("CLOSE", ev.close_content(4100, "done"))))
        self.assertEqual(self.client.closed, (4100, "done"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        session.client_closed(1000, "")
        self.assertEqual(self.origin.events(), [ev.Event("CLOSE", ev.close_content(1000))])
        self.origin.answer(reply())
        self.assertTrue(session.finished.called)
        self.client = FakeWsClient()
        session = self.open(reply(ev.Event("OPEN"), ev.Event("DISCONNECT")))
        self.assertTrue(self.client.aborted)
        session.client_lost()
        self.assertEqual(len(self.origin.requests), 1)
        self.assertTrue(session.finished.called)

    def test_origin_failures_close_1011(self) -> None:
        """An origin error, a non-events answer or malformed events after the open close
        the client with 1011; the session ends and leaves no timers."""
        bad_events = OriginReply(200, b"OK", (EVENTS,), b"TEXT 9\r\nx\r\n")
        for bad in (None, OriginReply(500, b"", (), b"oops"), bad_events):
            self.client = FakeWsClient()
            session = self.open(subscriptions=("a",))
            session.client_message(b"x", False)
            if bad is None:
                self.origin.requests[-1][2].errback(OriginError("connection refused"))
            else:
                self.origin.answer(bad)
            self.assertEqual(self.client.closed[0], 1011)
            self.assertTrue(session.finished.called)
            self.assertFalse(self.router.has_subscribers("a"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_open_fails_when_origin_unreachable(self) -> None:
        origin = FakeEventsOrigin()
        origin.post = lambda body, meta: fail(OriginError("refused"))
        session = WsOverHttpSession(origin, self.router, self.clock)
        self.failureResultOf(session.start(), OriginError)
        self.assertTrue(session.finished.called)

    def test_bad_control_messages_ignored(self) -> None:
        """As Pushpin: invalid control JSON or an unknown control type is logged and
        dropped; the connection and later messages go on."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.open(reply(ev.Event("OPEN"), control("{bad"), control('{"type":"explode"}'),
                        ev.Event("TEXT", b"m:still here")))
        self.assertEqual(self.client.sent, [("text", b"still here")])
        self.assertIsNone(self.client.closed)
        reasons = [str(e.get("reason")) for e in logged]
        self.assertTrue(any("not valid JSON" in r for r in reasons), reasons)
        self.assertTrue(any("unknown control message type" in r for r in reasons), reasons)

    def test_origin_timeout(self) -> None:
        """An origin that does not answer within request_timeout fails the session (1011),
        on OPEN too (the handler then answers 502)."""
        session = self.open()
        session.client_message(b"x", False)
        self.clock.advance(600)
        self.assertEqual(self.client.closed[0], 1011)
        self.assertIn("no answer", self.client.closed[1])
        self.assertTrue(session.finished.called)
        other = WsOverHttpSession(FakeEventsOrigin(), self.router, self.clock,
                                  SessionOptions(request_timeout=5))
        d = other.start()
        self.clock.advance(5)
        self.failureResultOf(d, OriginError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slow_origin_pauses_the_client(self) -> None:
        """Client data waiting for a slow origin past MAX_PENDING pauses reading from the
        client; it resumes once a request has taken the backlog."""
        session = self.open()
        chunk = b"x" * 100_000
        for _ in range(12):
            session.client_message(chunk, True)
        self.assertTrue(self.client.paused)
        self.origin.answer(reply())
        self.assertFalse(self.client.paused)
        self.assertEqual(len(self.origin.events()), 2)
