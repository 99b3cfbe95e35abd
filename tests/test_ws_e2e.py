"""End to end over real loopback sockets: an autobahn client -> the WebSocket handler ->
a real twisted.web origin answering application/websocket-events."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from fanout_tx.grip.signature import verify_hs256
from fanout_tx.outbound.origin import ProxySettings
from fanout_tx.transports.ws import events as ev
from tests.support.ws import ClientSide, WsTestMixin, events_reply, grip_echo


class OverHttpTests(WsTestMixin, TestCase):
    timeout = 60

    @inlineCallbacks
    def test_open_text_binary_both_ways(self):
        """Client TEXT and BINARY reach the origin as events; the origin's prefixed
        replies reach the client without the prefix, in order."""
        yield self.start(grip_echo)
        side, client = yield self.connect()
        client.sendMessage(b"hello")
        client.sendMessage(b"\x00\x01", isBinary=True)
        messages = yield side.wait_messages(2)
        self.assertEqual(messages, [(b"hello", False), (b"\x00\x01", True)])
        self.assertEqual(self.origin.event_names()[:1], ["OPEN"])
        self.assertIn("TEXT", self.origin.event_names())
        self.assertIn("BINARY", self.origin.event_names())

    @inlineCallbacks
    def test_origin_request_headers(self):
        """Origin requests carry the events content type, a stable Connection-Id, the grip
        extension, a Grip-Sig, and never the client's own Grip-*/Meta-*/Connection-Id."""
        self.proxy_settings = ProxySettings(sig_iss="fanout", sig_key=b"secret",
                                            x_forwarded_for=("append",))
        yield self.start(grip_echo)
        side, client = yield self.connect(headers={
            "Grip-Sig": "forged", "Meta-User": "evil", "Connection-Id": "mine", "X-App": "1"})
        client.sendMessage(b"x")
        yield side.wait_messages(1)
        first, second = self.origin.requests[0][0], self.origin.requests[1][0]
        for headers in (first, second):
            self.assertEqual(headers["content-type"], "application/websocket-events")
            self.assertEqual(headers["accept"], "application/websocket-events")
            self.assertEqual(headers["sec-websocket-extensions"], "grip")
            self.assertEqual(headers["x-app"], "1")
            self.assertNotIn("meta-user", headers)
            claims = verify_hs256(headers["grip-sig"], b"secret", reactor.seconds(), iss="fanout")
            self.assertEqual(set(claims), {"iss", "exp"})
        self.assertEqual(first["x-forwarded-for"], "127.0.0.1")
        self.assertNotEqual(first["connection-id"], "mine")
        self.assertEqual(first["connection-id"], second["connection-id"])
        self.assertEqual(self.origin.requests[0][2], b"/ws")

    @inlineCallbacks
    def test_rejection_relayed(self):
        """An origin that answers OPEN with a non-events response rejects the handshake;
        the client sees the origin's status and body."""
        yield self.start(lambda e, h: (403, [("Content-Type", "text/plain"),
                                             ("X-Why", "nope")], b"go away\n"))
        agent = Agent(reactor)
        response = yield agent.request(b"GET", f"http://127.0.0.1:{self.port}/ws".encode(),
                                       Headers({"Upgrade": ["websocket"],
                                                "Connection": ["Upgrade"],
                                                "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
                                                "Sec-WebSocket-Version": ["13"]}))
        body = yield treq.content(response)
        self.assertEqual((response.code, body), (403, b"go away\n"))
        self.assertEqual(response.headers.getRawHeaders(b"X-Why"), [b"nope"])
        side = ClientSide(f"ws://127.0.0.1:{self.port}/ws")
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(side)
        yield self.assertFailure(side.opened, ConnectionError)
        yield side.closed

    @inlineCallbacks
    def test_subscribe_then_publish(self):
        """A c: subscribe from the origin puts the connection on the channel; a publish
        reaches it, and a published close closes it with that code."""
        yield self.start(grip_echo)
        side, client = yield self.connect()
        client.sendMessage(b"sub:news")
        yield side.wait_messages(1)
        self.assertTrue(self.router.has_subscribers("news"))
        self.publish("news", content="breaking")
        self.publish("news", action="hint")  # pushpin-publish --hint: accepted, ignored
        self.publish("news", **{"content-bin": "AAE=", "type": "binary"})
        messages = yield side.wait_messages(3)
        self.assertEqual(messages[1:], [(b"breaking", False), (b"\x00\x01", True)])
        self.publish("news", action="close", code=4001, reason="bye")
        was_clean, code, _reason = yield side.closed
        self.assertEqual(code, 4001)
        yield self.origin.wait_for(lambda: "CLOSE" in self.origin.event_names())
        self.assertFalse(self.router.has_subscribers("news"))

    @inlineCallbacks
    def test_client_close_and_disconnect(self):
        """A client close reaches the origin as CLOSE with its code and reason; a client
        that drops the TCP connection becomes DISCONNECT."""
        yield self.start(grip_echo)
        side, client = yield self.connect()
        client.sendClose(4000, "done")
        clean, _code, _reason = yield side.closed
        self.assertTrue(clean)
        yield self.origin.wait_for(lambda: "CLOSE" in self.origin.event_names())
        close = next(e for _h, es, _u in self.origin.requests for e in es if e.name == "CLOSE")
        self.assertEqual(ev.parse_close(close.content), (4000, "done"))
        side2, client2 = yield self.connect()
        client2.transport.abortConnection()
        yield side2.closed
        yield self.origin.wait_for(lambda: "DISCONNECT" in self.origin.event_names())

    @inlineCallbacks
    def test_origin_close(self):
        """An origin CLOSE event closes the client with its code; the client's close reply
        goes back to the origin as CLOSE (as Pushpin)."""
        def answer(events, headers):
            if events and events[0].name == "OPEN":
                return events_reply(ev.Event("OPEN"))
            return events_reply(ev.Event("CLOSE", ev.close_content(4002, "origin says")))
        yield self.start(answer)
        side, client = yield self.connect()
        client.sendMessage(b"anything")
        _clean, code, reason = yield side.closed
        self.assertEqual((code, reason), (4002, "origin says"))
        yield self.origin.wait_for(lambda: "CLOSE" in self.origin.event_names())

    @inlineCallbacks
    def test_bad_origin_events_close_1011_and_spare_others(self):
        """Malformed events from the origin close that client with 1011 and a log line;
        another connection on the same origin keeps working."""
        def answer(events, headers):
            if events and events[0].name == "OPEN":
                return grip_echo(events, headers)
            if events[0].content == b"break":
                return 200, [("Content-Type", "application/websocket-events")], b"TEXT zz\r\n"
            return grip_echo(events, headers)
        yield self.start(answer)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        side, client = yield self.connect()
        other, other_client = yield self.connect()
        client.sendMessage(b"break")
        _clean, code, _reason = yield side.closed
        self.assertEqual(code, 1011)
        self.assertTrue(any("malformed events" in str(e.get("reason", "")) for e in logged))
        other_client.sendMessage(b"still here")
        messages = yield other.wait_messages(1)
        self.assertEqual(messages, [(b"still here", False)])

    @inlineCallbacks
    def test_invalid_control_ignored(self):
        """As Pushpin: invalid control JSON (also nested too deep), an unknown control type
        or a timeout past a day is logged and dropped; the connection stays open and the
        next message arrives."""
        def answer(events, headers):
            if events and events[0].name == "OPEN":
                return events_reply(ev.Event("OPEN"),
                                    headers=[("Sec-WebSocket-Extensions", "grip")])
            return events_reply(ev.Event("TEXT", b"c:{not json"),
                                ev.Event("TEXT", b'c:{"type": "explode"}'),
                                ev.Event("TEXT", b"c:" + b"[" * 50_000),  # too deep
                                ev.Event("TEXT", b'c:{"type": "keep-alive", "content": "k", '
                                         b'"timeout": ' + b"9" * 400 + b"}"),
                                ev.Event("TEXT", b"m:after"),
                                headers=[("Sec-WebSocket-Extensions", "grip")])
        yield self.start(answer)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        side, client = yield self.connect()
        client.sendMessage(b"go")
        messages = yield side.wait_messages(1)
        self.assertEqual(messages, [(b"after", False)])
        reasons = [str(e.get("reason", "")) for e in logged]
        self.assertTrue(any("not valid JSON" in r for r in reasons))
        self.assertTrue(any("unknown control message type" in r for r in reasons))
        self.assertEqual(reasons.count("control message is not valid JSON"), 2)
        self.assertIn("'timeout' must be a whole number of seconds, 0 to 86400", reasons)

    @inlineCallbacks
    def test_oversized_message_closes_1009(self):
        """A client message over the size limit is refused with close code 1009."""
        self.max_message = 1000
        yield self.start(grip_echo)
        side, client = yield self.connect()
        client.sendMessage(b"x" * 2000)
        _clean, code, _reason = yield side.closed
        self.assertEqual(code, 1009)

    @inlineCallbacks
    def test_origin_message_over_limit_closes_1009(self):
        """An origin message over max_message cannot reach the client: it is closed with
        1009 and the reason, whether the message came with OPEN or later."""
        self.max_message = 1000
        big = ev.Event("TEXT", b"m:" + b"x" * 5000)

        def answer(events, headers):
            if events and events[0].name == "OPEN":
                with_open = headers.get("sec-websocket-protocol") == "early"
                return events_reply(ev.Event("OPEN"), *([big] if with_open else []),
                                    headers=[("Sec-WebSocket-Extensions", "grip")])
            return events_reply(big, headers=[("Sec-WebSocket-Extensions", "grip")])
        yield self.start(answer)
        side, client = yield self.connect()
        client.sendMessage(b"go")
        self.assertEqual((yield side.closed)[1:], (1009, "message too big"))
        side, _client = yield self.connect(protocols=["early"])
        self.assertEqual((yield side.closed)[1:], (1009, "message too big"))

    @inlineCallbacks
    def test_unreachable_origin_is_502(self):
        """No origin listening: the handshake gets 502."""
        yield self.start(grip_echo, "* 127.0.0.1:1,over_http")
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.port}/ws".encode(),
            Headers({"Upgrade": ["websocket"], "Connection": ["Upgrade"],
                     "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
                     "Sec-WebSocket-Version": ["13"]}))
        body = yield treq.content(response)
        self.assertEqual(response.code, 502)
        self.assertIn(b"Error while proxying", body)

    @inlineCallbacks
    def test_thousand_clients_one_publish(self):
        """1,000 clients on one channel each get one publish, framed once."""
        yield self.start(grip_echo, "* {origin},over_http,sub=many")
        prepared_calls = []
        original = self.factory.prepareMessage

        def counting(*args: Any, **kwargs: Any) -> Any:
            prepared_calls.append(args)
            return original(*args, **kwargs)

        self.factory.prepareMessage = counting
        sides = []
        for _batch in range(10):  # batches keep the three stacks in this process responsive
            sides += yield gatherResults([self.connect() for _ in range(100)])
        self.assertEqual(len(self.router.subscribers()), 1000)
        self.publish("many", content="to all")
        received = yield gatherResults([side.wait_messages(1) for side, _c in sides])
        self.assertEqual({tuple(r) for r in received}, {((b"to all", False),)})
        self.assertEqual(len(prepared_calls), 1)

    @inlineCallbacks
    def test_one_event_meta_and_delayed(self):
        """one_event: each client message gets its own request, in order; Set-Meta-* from
        the origin comes back as Meta-*; send-delayed is held until flush-delayed."""
        def answer(events, headers):
            grip = [("Sec-WebSocket-Extensions", "grip")]
            if events and events[0].name == "OPEN":
                return events_reply(ev.Event("OPEN"), headers=[*grip, ("Set-Meta-User", "ann")])
            content = events[0].content
            if content == b"delay":
                return events_reply(ev.Event("TEXT", b'c:{"type": "send-delayed", '
                                                     b'"content": "later", "timeout": 60}'),
                                    headers=grip)
            if content == b"flush":
                return events_reply(ev.Event("TEXT", b'c:{"type": "flush-delayed"}'),
                                    headers=grip)
            return events_reply(headers=grip)
        yield self.start(answer, "* {origin},over_http,one_event")
        side, client = yield self.connect()
        for payload in (b"a", b"b", b"delay"):
            client.sendMessage(payload)
        yield self.origin.wait_for(lambda: len(self.origin.requests) == 4)
        self.assertEqual([events for _h, events, _u in self.origin.requests[1:]],
                         [[ev.Event("TEXT", b"a")], [ev.Event("TEXT", b"b")],
                          [ev.Event("TEXT", b"delay")]])
        self.assertEqual(self.origin.requests[1][0]["meta-user"], "ann")
        self.assertEqual(side.messages, [])
        client.sendMessage(b"flush")
        messages = yield side.wait_messages(1)
        self.assertEqual(messages, [(b"later", False)])
