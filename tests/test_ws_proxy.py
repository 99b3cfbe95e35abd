"""Plain WebSocket proxying (routes without over_http) to a real autobahn origin, with the
grip extension semantics, over loopback sockets."""

from __future__ import annotations

import base64
import hashlib

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from tests.support.ws import WsProxyMixin, listen_endpoint

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

UPGRADE = Headers({"Upgrade": ["websocket"], "Connection": ["Upgrade"],
                   "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
                   "Sec-WebSocket-Version": ["13"]})


class MaskingOrigin(Protocol):
    """A broken WebSocket origin: accepts the handshake, then sends a masked frame (a
    protocol error from a server) and keeps the connection open."""

    answered = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.answered:  # frames after the handshake are not read
            return
        self.answered = True
        key = next(line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n" + b"\x81\x81\x00\x00\x00\x00x")


class ProxyTests(WsProxyMixin, TestCase):
    timeout = 30

    @inlineCallbacks
    def test_grip_relay_both_ways(self):
        """Client messages reach the origin; origin messages with the m: prefix reach the
        client without it, others are dropped; the handshake carries the grip offer and
        the client's own headers."""
        yield self.start_ws()
        side, client = yield self.connect("/grip/x?a=1", headers={"X-App": "1"})
        client.sendMessage(b"hello")
        client.sendMessage(b"\x00\x01", isBinary=True)
        messages = yield side.wait_messages(2)
        self.assertEqual(messages, [(b"hello", False), (b"\x00\x01", True)])
        request = self.origin_factory.requests[0]
        self.assertEqual(request.path, "/grip/x")
        self.assertEqual(request.params, {"a": ["1"]})
        self.assertEqual(request.headers["x-app"], "1")
        self.assertEqual(request.headers["sec-websocket-extensions"], "grip")
        self.assertIn("grip-feature", request.headers)

    @inlineCallbacks
    def test_subscribe_and_publish(self):
        """A c: subscribe from the WebSocket origin subscribes the client; sub= on the
        target subscribes it at once; publishes reach it."""
        yield self.start_ws()
        side, client = yield self.connect("/grip/x")
        client.sendMessage(b"sub:news")
        yield side.wait_messages(1)
        self.publish("news", content="one")
        self.publish("all", content="two")
        messages = yield side.wait_messages(3)
        self.assertEqual(messages[1:], [(b"one", False), (b"two", False)])

    @inlineCallbacks
    def test_plain_origin_is_verbatim(self):
        """Without grip from the origin, messages (even c:...) pass through unchanged."""
        yield self.start_ws()
        side, client = yield self.connect("/plain")
        client.sendMessage(b'c:{"type":"subscribe","channel":"x"}')
        messages = yield side.wait_messages(1)
        self.assertEqual(messages, [(b'c:{"type":"subscribe","channel":"x"}', False)])
        self.assertFalse(self.router.has_subscribers("x"))

    @inlineCallbacks
    def test_close_codes_both_ways(self):
        """A client close reaches the origin with its code; an origin close reaches the
        client with its code."""
        yield self.start_ws()
        side, client = yield self.connect("/grip/x")
        closed = self.origin_closed()
        client.sendClose(4000, "client bye")
        code = yield closed
        self.assertEqual(code, 4000)
        yield side.closed
        side2, client2 = yield self.connect("/grip/x")
        client2.sendMessage(b"close")
        _clean, code, reason = yield side2.closed
        self.assertEqual((code, reason), (4003, "origin bye"))

    @inlineCallbacks
    def test_client_lost_drops_origin(self):
        """The origin connection goes too, without a warning per connection in the log."""
        yield self.start_ws()
        side, client = yield self.connect("/grip/x")
        closed = self.origin_closed()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        client.transport.abortConnection()
        yield side.closed
        yield closed
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual([e for e in logged if e["log_level"] >= LogLevel.warn], [])

    @inlineCallbacks
    def test_client_messages_after_the_origin_failed(self):
        """The origin broke the protocol (autobahn is closing it): client messages sent
        meanwhile are dropped, not raised out of the handler, and the client is closed."""
        port = yield listen_endpoint().listen(Factory.forProtocol(MaskingOrigin))
        self.addCleanup(port.stopListening)
        yield self.start_handler(f"* 127.0.0.1:{port.getHost().port}")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        side, client = yield self.connect("/x")
        for _ in range(3):
            client.sendMessage(b"hello")
        _clean, code, reason = yield side.closed
        self.assertEqual((code, reason), (1011, "origin connection lost"))
        self.assertEqual([e for e in logged if e["log_level"] >= LogLevel.error], [])

    @inlineCallbacks
    def test_rejection_and_unreachable(self):
        """An origin that refuses the handshake: the client gets its status. No origin
        listening: 502."""
        yield self.start_ws()
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.port}/reject".encode(), UPGRADE)
        yield treq.content(response)
        self.assertEqual(response.code, 403)
        yield self.start_handler("* 127.0.0.1:1")
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.port}/x".encode(), UPGRADE)
        body = yield treq.content(response)
        self.assertEqual((response.code, body), (502, b"Error while proxying to origin.\n"))

    @inlineCallbacks
    def test_detach(self):
        """detach: the origin connection closes, the client stays with its subscriptions
        and still gets publishes."""
        yield self.start_ws()
        side, client = yield self.connect("/grip/x")
        closed = self.origin_closed()
        client.sendMessage(b"detach")
        yield closed
        self.publish("all", content="still here")
        messages = yield side.wait_messages(1)
        self.assertEqual(messages, [(b"still here", False)])
        (session,) = self.handler.sessions
        client.sendMessage(b"goes nowhere")
        client.sendClose(1000)
        yield session.finished
        self.assertEqual(self.router.subscriber_count(), 0)

    @inlineCallbacks
    def test_origin_message_size_limit(self):
        """The client message limit applies to origin messages too: past it the origin
        hears 1009, and the client hears the origin's close."""
        self.max_message = 1000
        yield self.start_ws()
        side, client = yield self.connect("/grip/x")
        closed = self.origin_closed()
        client.sendMessage(b"big")
        code = yield closed
        self.assertEqual(code, 1009)
        yield side.closed
        self.assertEqual(side.messages, [])
