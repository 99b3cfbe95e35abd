"""More hostile parties, found by probing a live instance after issue 13's list: each test
goes through real loopback sockets and failed before its fix."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from typing import Any

import zmq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import NOT_DONE_YET, Site
from typing_extensions import override

from fanout_tx.outbound.origin import ProxySettings
from fanout_tx.transports.ws import events as ev
from tests.support.helpers import RawClient, wait_until
from tests.support.ops_fixtures import Server
from tests.support.proxy_fixtures import ProxyHarness
from tests.support.ws import WsOverHttpOrigin, WsTestMixin, events_reply, grip_echo, listen_endpoint


def within(d: Deferred[Any], seconds: float = 10.0) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


async def wait_until_async(read: Any, check: Any, timeout: float = 10.0) -> None:
    """Read (a coroutine) until ``check`` holds for what it read; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while not check(await read()):
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await sleep(0.05)


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def closing_origin(events: list[ev.Event], _headers: dict[str, str]) -> tuple:
    """Accepts; a TEXT ``CODE:REASON`` is answered with that CLOSE."""
    if events[0].name == "OPEN":
        return events_reply(ev.Event("OPEN"))
    text = next((e.content for e in events if e.name == "TEXT"), None)
    if text is None:  # the client's close reply
        return events_reply()
    code, _, reason = text.partition(b":")
    return events_reply(ev.Event("CLOSE", int(code).to_bytes(2, "big") + reason))


class CloseFrameTests(WsTestMixin, TestCase):
    """What an origin (a CLOSE event) or a publisher (ws-message close) names as the close
    code and reason reaches the client only as a close frame the client accepts (RFC 6455
    7.4, 5.5.1): an autobahn client fails the connection on anything else, as browsers do."""

    async def close_with(self, payload: bytes) -> tuple[bool, int | None, str]:
        side, client = await self.connect()
        client.sendMessage(payload)
        return await within(side.closed)

    async def test_codes_that_may_not_be_sent(self) -> None:
        await self.start(closing_origin)
        for code in (1004, 1005, 1006, 1015, 999, 0, 2999):
            clean, got, _reason = await self.close_with(b"%d:why" % code)
            self.assertEqual((clean, got), (True, None), code)  # a close frame without code
        self.assertEqual(await self.close_with(b"4001:fine"), (True, 4001, "fine"))

    async def test_long_reason_cut_at_a_character_boundary(self) -> None:
        await self.start(closing_origin)
        reason = "\u00e9" * 100  # 200 bytes: 123 would cut the 62nd character in half
        clean, code, got = await self.close_with(b"4000:" + reason.encode("utf-8"))
        self.assertEqual((clean, code, got), (True, 4000, "\u00e9" * 61))

    async def test_publisher_close_code_and_reason(self) -> None:
        await self.start(grip_echo)
        side, client = await self.connect()
        client.sendMessage(b"sub:room")
        await within(side.wait_messages(1))
        self.publish("room", action="close", code=4003, reason="\u00e9" * 61)
        self.assertEqual(await within(side.closed), (True, 4003, "\u00e9" * 61))


class PublishedCloseTests(TestCase):
    """A publisher's ws-message close named any code from 1000 to 4999: 1004-1006, 1015
    and 1016-2999 may not be on the wire (RFC 6455 7.4), so the client got a close frame
    without code and the publisher never knew. They are refused now: a 400 saying why over
    HTTP, a logged and counted drop over ZeroMQ."""

    timeout = 60

    async def test_codes_and_reasons_that_may_not_be_sent(self) -> None:
        server = await Server(self).start()
        for code in (1004, 1005, 1006, 1015, 1016, 2999):
            status, body = await server.post_json("/publish/", {"items": [{
                "channel": "room", "formats": {"ws-message": {"action": "close",
                                                               "code": code}}}]})
            self.assertEqual(status, 400, code)
            self.assertIn(b"may not be sent in a close frame (RFC 6455 7.4)", body)
        status, body = await server.post_json("/publish/", {"items": [{
            "channel": "room", "formats": {"ws-message": {
                "action": "close", "code": 4000, "reason": "x" * 124}}}]})
        self.assertEqual(status, 400)
        self.assertIn(b"reason must be at most 123 bytes", body)
        for code in (1000, 1003, 1007, 1014, 3000, 4999):
            await server.publish(**{"ws-message": {"action": "close", "code": code,
                                                   "reason": "x" * 123}})
        context = zmq.Context()
        self.addCleanup(context.term)
        push = context.socket(zmq.PUSH)
        self.addCleanup(push.close, 0)
        push.connect(server.root.getServiceNamed("zmq-pull").endpoints[0])
        push.send(b"J" + json.dumps({"channel": "room", "formats": {
            "ws-message": {"action": "close", "code": 1005}}}).encode())
        key = ("fanout_publish_errors_total", (("input", "zmq-pull"),))
        await wait_until_async(lambda: server.metrics(), lambda m: m.get(key) == 1)


class _PingFlooder(Protocol):
    """A WebSocket client that never reads: once upgraded it writes ``count`` pings of
    125 bytes. ``lost`` fires when the server drops the connection."""

    count = 80_000  # 10 MB of pings: 10 MB of pongs to queue if every one is answered

    def __init__(self) -> None:
        self.head = b""
        self.lost: Deferred[None] = Deferred()

    @override
    def connectionMade(self) -> None:
        # A small receive buffer, so the kernel does not absorb the pongs for us.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16))
        self.transport.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")

    @override
    def dataReceived(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.pauseProducing()  # never reads again
            ping = b"\x89\xfd\x00\x00\x00\x00" + b"p" * 125  # masked, zero mask
            self.transport.write(ping * self.count)

    @override
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class PingFloodTests(WsTestMixin, TestCase):
    async def test_pongs_for_a_client_that_does_not_read_are_bounded(self) -> None:
        """Pings from a client that never reads: each pong autobahn answers used to queue
        in the server's write buffer without end. They count against max_outbound now,
        so the client is closed (1008) and dropped."""
        await self.start(grip_echo)
        self.factory.max_outbound = 100_000
        flooder = _PingFlooder()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(
            Factory.forProtocol(lambda: flooder))
        self.addCleanup(flooder.transport.abortConnection)
        await within(flooder.lost, 20)


class _SlowOrigin(WsOverHttpOrigin):
    """Accepts; answers the first request after OPEN 3 s late (empty), the rest at
    once; records each request body's size."""

    def __init__(self) -> None:
        super().__init__(grip_echo)
        self.sizes: list[int] = []

    def render_POST(self, request: Any) -> Any:  # noqa: N802
        body = request.content.read()
        self.sizes.append(len(body))
        self._check_waiters()
        request.responseHeaders.addRawHeader("Content-Type", "application/websocket-events")
        if len(self.sizes) == 2:
            reactor.callLater(3.0, request.finish)
            return NOT_DONE_YET
        return b"OPEN\r\n" if body.startswith(b"OPEN") else b""


class EmptyMessageFloodTests(WsTestMixin, TestCase):
    async def test_empty_messages_count_while_the_origin_is_busy(self) -> None:
        """Empty messages (6 bytes each on the wire) sent while a WebSocket-over-HTTP
        request is in flight: counted as 0 bytes, they queued without bound and all went
        in the next request. Their framing counts now: reading pauses past 1 MB and a
        request carries about 200 kB."""
        origin = _SlowOrigin()
        port = await listen_endpoint().listen(Site(origin))
        self.addCleanup(port.stopListening)
        await self.start_handler(f"* 127.0.0.1:{port.getHost().port},over_http")
        side, client = await self.connect()
        client.sendMessage(b"first")
        client.sendData(b"\x81\x80\x00\x00\x00\x00" * 150_000)  # empty TEXT frames
        await within(origin.wait_for(lambda: sum(origin.sizes) >= 1_500_000), 30)
        self.assertLess(max(origin.sizes), 300_000, origin.sizes)


class HostHeaderTests(TestCase):
    async def test_several_host_headers_are_a_400(self) -> None:
        """Two Host headers: the route was chosen by the last one while the origin got the
        first, so the origin could see another site than the one the route was for. A 400
        (RFC 9112 3.2), for plain requests and WebSocket handshakes, and the origin hears
        nothing."""
        proxy = ProxyHarness(self)
        proxy.set_routes(f"other.example {proxy.origin_address}")  # only "other" is routed
        port = proxy.proxy_port.getHost().port
        for upgrade in (b"", b"Upgrade: websocket\r\nConnection: Upgrade\r\n"):
            client = await ClientCreator(reactor, RawClient).connectTCP("127.0.0.1", port)
            client.transport.write(b"GET / HTTP/1.1\r\nHost: victim.example\r\n" + upgrade
                                   + b"Host: other.example\r\n\r\n")
            await wait_until(lambda c=client: b"\r\n\r\n" in c.data)
            client.transport.abortConnection()
            self.assertTrue(client.data.startswith(b"HTTP/1.1 400 "), client.data)
        self.assertEqual(proxy.origin.requests, [])


class _PingingOrigin(Protocol):
    """A WebSocket origin that accepts, stops reading, and sends ``count`` pings of 125
    bytes, then a TEXT ``done``."""

    count = 80_000

    def __init__(self) -> None:
        self.head = b""

    @override
    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.head.endswith(b"\r\n\r\n"):
            return
        self.head += data
        if not self.head.endswith(b"\r\n\r\n"):
            return
        key = next(line.split(b":", 1)[1].strip() for line in self.head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n")
        self.transport.pauseProducing()  # never reads again
        self.transport.write(b"\x89\x7d" + b"p" * 125)
        reactor.callLater(0.2, lambda: self.transport.write(
            (b"\x89\x7d" + b"p" * 125) * self.count + b"\x81\x04done"))


def _queued(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds that the kernel has not taken yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class OriginPingFloodTests(WsTestMixin, TestCase):
    async def test_pongs_for_an_origin_that_does_not_read_are_bounded(self) -> None:
        """WebSocket proxying to an origin that pings and never reads: each pong autobahn
        answered queued in the server without end. No pong while its socket is full."""
        origins: list[_PingingOrigin] = []
        factory = Factory.forProtocol(lambda: origins.append(_PingingOrigin()) or origins[-1])
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.start_handler(f"* 127.0.0.1:{port.getHost().port}")
        side, _client = await self.connect()
        self.addCleanup(lambda: [o.transport.abortConnection() for o in origins])
        await within(side.wait_messages(1), 30)  # every ping before it was read
        self.assertEqual(side.messages, [(b"done", False)])
        session = next(iter(self.handler.sessions))
        self.assertLess(_queued(session._origin.transport), 1_000_000)
        origins[0].transport.abortConnection()
        await within(side.closed)  # 1011 "origin connection lost", handshake and all


def _trickle(request: Any, head: dict[str, str], length: int, every: float = 0.2) -> Any:
    """An origin answer whose head comes at once and whose ``length``-byte body comes one
    byte per ``every`` seconds; ``request.cut`` fires when the proxy closes the connection."""
    for name, value in head.items():
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders("Content-Length", [str(length)])
    request.write(b"{")
    sent = [1]

    def more() -> None:
        request.write(b" ")
        sent[0] += 1
        if sent[0] < length:
            timer[0] = reactor.callLater(every, more)
        else:
            request.finish()

    timer = [reactor.callLater(every, more)]

    def cut(_failure: Failure) -> None:
        timer[0].cancel()
        request.cut.callback(None)

    request.cut = Deferred()
    request.notifyFinish().addErrback(cut)
    return NOT_DONE_YET


class TricklingBodyTests(TestCase):
    """An origin that sends its head at once and then trickles the body of an answer the
    proxy reads whole (a GRIP instruction, a JSON-P answer) held its client until it
    finished: origin_timeout covered the head only. The body read whole has the same
    deadline now; then 502, and the origin connection is closed."""

    async def answer_within(self, route: str, path: bytes, head: dict[str, str]) -> Any:
        proxy = ProxyHarness(self, route=route, settings=ProxySettings(origin_timeout=1.0))
        requests: list[Any] = []
        proxy.handle(b"/t", lambda r: requests.append(r) or _trickle(r, head, 100))
        client = await ClientCreator(reactor, RawClient).connectTCP(
            "127.0.0.1", proxy.proxy_port.getHost().port)
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: b"\r\n\r\n" in client.data, timeout=5)  # not 20 s
        await within(requests[0].cut, 5)  # the origin connection is not kept
        return client.data

    async def test_instruction_body(self) -> None:
        answer = await self.answer_within("*", b"/t", {"Grip-Hold": "response",
                                                       "Grip-Channel": "c"})
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)

    async def test_grip_instruct_body(self) -> None:
        head = {"Content-Type": "application/grip-instruct"}
        answer = await self.answer_within("*", b"/t", head)
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)

    async def test_jsonp_answer(self) -> None:
        answer = await self.answer_within("*,aco", b"/t?callback=cb", {})
        self.assertIn(b"502", answer.split(b"\r\n")[0] + answer.partition(b"\r\n\r\n")[2])

    async def test_streamed_body_is_left_alone(self) -> None:
        """A body relayed as it comes goes at the origin's pace, past origin_timeout."""
        proxy = ProxyHarness(self, settings=ProxySettings(origin_timeout=0.5))
        proxy.handle(b"/t", lambda r: _trickle(r, {}, 8, every=0.25))
        response, body = await within(Deferred.fromCoroutine(proxy.fetch(b"/t")), 10)
        self.assertEqual((response.code, body), (200, b"{" + b" " * 7))


def _bad_text_origin(events: list[ev.Event], _headers: dict[str, str]) -> tuple:
    """Accepts with grip; a client TEXT is answered with text the client must not get as
    text (a TEXT event, a send-delayed of type text, neither UTF-8), then ``ok``."""
    if events[0].name == "OPEN":
        return events_reply(ev.Event("OPEN"), headers=[("Sec-WebSocket-Extensions", "grip")])
    if not any(e.name == "TEXT" for e in events):
        return events_reply()
    delayed = {"type": "send-delayed", "message-type": "text", "timeout": 0,
               "content-bin": base64.b64encode(b"\xc3(").decode()}
    return events_reply(ev.Event("TEXT", b"m:\xff\xfebad"),
                        ev.Event("TEXT", b"c:" + json.dumps(delayed).encode()),
                        ev.Event("TEXT", b"m:ok"))


class InvalidTextFromOriginTests(WsTestMixin, TestCase):
    async def test_text_that_is_not_utf8_is_dropped(self) -> None:
        """A WebSocket-over-HTTP origin's TEXT that is not UTF-8 went to the client as a
        text frame, and the client failed the connection (1007). It is dropped and logged
        now (Pushpin passes it on); the connection goes on."""
        await self.start(_bad_text_origin)
        side, client = await self.connect()
        client.sendMessage(b"go")
        await within(side.wait_messages(1))
        await sleep(0.2)  # the delayed message would have gone by now
        self.assertEqual(side.messages, [(b"ok", False)])
        self.assertFalse(side.closed.called)
        client.sendMessage(b"again")  # still open, both ways
        await within(side.wait_messages(2))
        self.assertEqual(side.messages[1], (b"ok", False))


class _TricklingEventsOrigin(WsOverHttpOrigin):
    """Accepts; answers the next request with its head at once and its body one byte
    every 0.2 s (``_trickle``); ``cut`` fires when the server closes that connection."""

    def __init__(self) -> None:
        super().__init__(grip_echo)
        self.cut: Deferred[None] | None = None

    def render_POST(self, request: Any) -> Any:  # noqa: N802
        if request.content.read().startswith(b"OPEN"):
            request.responseHeaders.addRawHeader("Content-Type", "application/websocket-events")
            return b"OPEN\r\n"
        answer = _trickle(request, {"Content-Type": "application/websocket-events"}, 100)
        self.cut = request.cut
        return answer


class TricklingEventsTests(WsTestMixin, TestCase):
    proxy_settings = ProxySettings(origin_timeout=1.0)

    async def test_reply_body_past_the_deadline_closes_the_origin_connection(self) -> None:
        """A WebSocket-over-HTTP reply trickled past origin_timeout: the client got 1011,
        but the origin connection went on reading the body, into a collector whose result
        was already given up (a late AlreadyCalledError). It is closed now."""
        origin = _TricklingEventsOrigin()
        port = await listen_endpoint().listen(Site(origin))
        self.addCleanup(port.stopListening)
        await self.start_handler(f"* 127.0.0.1:{port.getHost().port},over_http")
        side, client = await self.connect()
        client.sendMessage(b"hello")
        clean, code, _reason = await within(side.closed, 10)
        self.assertEqual(code, 1011)
        assert origin.cut is not None
        await within(origin.cut, 5)
