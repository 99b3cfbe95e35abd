"""A faulty or hostile origin behind the proxy, scripted byte by byte on a plain loopback
socket: whatever it writes, no byte of one client's exchange reaches another client, no
forged header line reaches a client, and a faulty answer is a 502 on a connection that is
then closed, never pooled (issue 13, items 1 and 3). The same for a WebSocket origin's
handshake refusal."""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from typing_extensions import override

from tests.support.helpers import wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness
from tests.support.ws import WsTestMixin

# What a buggy origin writes after an answer that has no body (or past its Content-Length):
# shaped as an answer, it would be the next exchange's answer if the connection were reused.
FORGED = b"HTTP/1.1 200 OK\r\nX-Injected-By: attacker\r\nContent-Length: 6\r\n\r\nforged"
GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ngood!"


class ScriptedOrigin:
    """A plain non-blocking listening socket: the test reads what the proxy sent on each
    connection and writes exactly the bytes it wants, when it wants (even while the
    reactor is not running)."""

    def __init__(self, test: TestCase) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.received: list[bytes] = []
        self.answered: list[int] = []
        self.closed: list[bool] = []
        test.addCleanup(self.close)

    def poll(self) -> None:
        while True:
            try:
                conn, _address = self.listener.accept()
            except BlockingIOError:
                break
            conn.setblocking(False)
            self.connections.append(conn)
            self.received.append(b"")
            self.answered.append(0)
            self.closed.append(False)
        for index, conn in enumerate(self.connections):
            while not self.closed[index]:
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self.closed[index] = True
                self.received[index] += data

    def unanswered(self) -> list[int]:
        """Connections with a whole request head that has had no answer yet."""
        self.poll()
        return [i for i, data in enumerate(self.received)
                if data.count(b"\r\n\r\n") > self.answered[i]]

    async def next_request(self) -> int:
        await wait_until(self.unanswered)
        return self.unanswered()[0]

    def send(self, index: int, data: bytes, answers: bool = True) -> None:
        self.answered[index] += answers
        self.connections[index].sendall(data)

    async def wait_closed(self, index: int) -> None:
        await wait_until(lambda: self.poll() or self.closed[index])

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.listener.close()


def within(d: Deferred[Any], seconds: float = 10.0) -> Deferred[Any]:
    """``d``, failed with TimeoutError after ``seconds``."""
    return d.addTimeout(seconds, reactor)


async def read_body(response: Any) -> bytes:
    collect = Collect()
    response.deliverBody(collect)
    return await within(collect.done)


def harness_for(test: TestCase) -> tuple[ProxyHarness, ScriptedOrigin]:
    harness = ProxyHarness(test)
    origin = ScriptedOrigin(test)
    harness.set_routes(f"* 127.0.0.1:{origin.port}")
    return harness, origin


async def answered(harness: ProxyHarness, origin: ScriptedOrigin, answer: bytes,
                   path: bytes = b"/", method: bytes = b"GET") -> tuple[Any, bytes, int]:
    """One client request the origin answers with ``answer``: (response, body, the index
    of the origin connection it came on)."""
    pending = harness.request(path, method=method)
    index = await origin.next_request()
    origin.send(index, answer)
    response = await within(pending)
    return response, await read_body(response), index


class RawHttpClient:
    """A client on a plain socket, so its request can be in the proxy's kernel buffer while
    the reactor is not running."""

    def __init__(self, test: TestCase, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.data = b""
        self.eof = False
        test.addCleanup(self.sock.close)

    def poll(self) -> bool:
        """Read what is there; True once the proxy closed the connection."""
        while not self.eof:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            self.eof = not chunk
            self.data += chunk
        return self.eof


class PoolTests(TestCase):
    async def test_body_after_a_bodyless_answer_reaches_nobody(self) -> None:
        """The origin owes no body after a HEAD, 204 or 304 answer, writes one anyway, late
        (here once the next request is on its way): the next client must get its own answer.
        Such a connection is closed, so the next request goes on a fresh one."""
        for method, status in ((b"HEAD", b"200 OK"), (b"GET", b"204 No Content"),
                               (b"GET", b"304 Not Modified")):
            harness, origin = harness_for(self)
            head = b"HTTP/1.1 %b\r\nContent-Length: %d\r\n\r\n" % (status, len(FORGED))
            response, _body, first = await answered(harness, origin, head, b"/a", method)
            self.assertEqual(response.code, int(status[:3]))
            second = harness.request(b"/b")
            index = await origin.next_request()
            if index == first:  # reused: the late body comes before the real answer
                origin.send(first, FORGED, answers=False)
            origin.send(index, GOOD)
            response = await within(second)
            self.assertEqual(await read_body(response), b"good!", status)
            self.assertIsNone(response.headers.getRawHeaders(b"x-injected-by"))
            self.assertNotEqual(index, first, status)
            await origin.wait_closed(first)

    async def test_bytes_past_content_length_read_later_reach_nobody(self) -> None:
        """Bytes past an answer's Content-Length that arrive as a separate read, after the
        connection went back to the pool and in the same reactor turn as the next client's
        request: that request must not go on this connection (whose stray bytes would be
        its answer)."""
        harness, origin = harness_for(self)
        _response, body, first = await answered(
            harness, origin, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"/a")
        self.assertEqual(body, b"hello")
        client = RawHttpClient(self, harness.proxy_port.getHost().port)
        channels = set(harness.proxy_factory.protocols)
        await wait_until(lambda: set(harness.proxy_factory.protocols) - channels)
        # The reactor does not run from here to the end of this block: the client's request
        # and the stray bytes both wait in the kernel, the request first.
        client.sock.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.05)
        origin.send(first, FORGED, answers=False)
        time.sleep(0.05)

        def answer_fresh() -> bool:
            for index in origin.unanswered():
                if index != first:
                    origin.send(index, GOOD)
            return client.poll()

        await wait_until(answer_fresh)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 OK\r\n"), client.data)
        self.assertTrue(client.data.endswith(b"\r\n\r\ngood!"), client.data)
        self.assertNotIn(b"attacker", client.data)
        self.assertNotIn(b"forged", client.data)
        await origin.wait_closed(first)

    async def test_clean_answers_still_share_a_connection(self) -> None:
        """The rule costs nothing for an origin that frames its answers exactly."""
        harness, origin = harness_for(self)
        indexes = set()
        for answer in (GOOD, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\ngood!\r\n0\r\n\r\n", GOOD):
            _response, body, index = await answered(harness, origin, answer)
            self.assertEqual(body, b"good!")
            indexes.add(index)
        self.assertEqual(indexes, {0})


class FaultyAnswerTests(TestCase):
    async def assert_refused(self, answers: list[bytes]) -> None:
        """Each answer gets the client a 502 (no header of the origin's), and its origin
        connection is closed."""
        harness, origin = harness_for(self)
        for answer in answers:
            response, body, index = await answered(harness, origin, answer)
            self.assertEqual((response.code, body),
                             (502, b"Error while proxying to origin.\n"), answer)
            for name in (b"set-cookie", b"x-injected-by", b"x-a"):
                self.assertIsNone(response.headers.getRawHeaders(name), answer)
            await origin.wait_closed(index)

    async def test_response_splitting_in_the_head(self) -> None:
        """A bare LF or CR in the status line or a header, or another control character,
        would give the client a header line the origin's other readers do not see."""
        await self.assert_refused([
            b"HTTP/1.1 200 OK\nSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\rSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1x 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])

    async def test_header_name_spacing_folding_and_framing_duplicates(self) -> None:
        """Whitespace before a header's colon (the hand-written parser stripped it: a header
        other readers do not see, RFC 9112 5.1), obsolete line folding, an empty line before
        the status line, and a Content-Length given twice or as a list (llhttp refuses)."""
        await self.assert_refused([
            b"HTTP/1.1 200 OK\r\nSet-Cookie : x=1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n Set-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
            b"\r\nHTTP/1.1 200 OK\r\nSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        ])

    async def test_bare_lf_head_is_refused_at_once(self) -> None:
        """An origin ending its lines with a bare LF gets a 502 as soon as it is seen (not
        after ``origin_timeout``)."""
        await self.assert_refused([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"])

    async def test_unasked_switching_protocols(self) -> None:
        """A 101 we did not ask for: what follows is another protocol, not an answer."""
        await self.assert_refused([b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + FORGED])

    async def test_transfer_encoding_other_than_chunked(self) -> None:
        """The final (and only) coding must be exactly ``chunked``; an HTTP/1.0 answer with
        Transfer-Encoding has faulty framing (RFC 9112 6.1)."""
        chunked_ok = b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        await self.assert_refused([
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked" + chunked_ok,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked" + chunked_ok,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip"
            + chunked_ok,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked"
            + chunked_ok,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        ])

    async def test_chunked_spelling_and_content_length_with_it(self) -> None:
        """``Chunked`` in any case, with empty list elements, is chunked. With a
        Content-Length as well, Transfer-Encoding wins and the connection is not reused."""
        harness, origin = harness_for(self)
        _response, body, first = await answered(
            harness, origin, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , CHUNKED\r\n\r\n"
                             b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(body, b"ok")
        _response, body, second = await answered(
            harness, origin, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                             b"Content-Length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        self.assertEqual((body, second), (b"ok", first))
        _response, body, third = await answered(harness, origin, GOOD)
        self.assertEqual(body, b"good!")
        self.assertNotEqual(third, second)
        await origin.wait_closed(second)

    async def test_other_clients_unaffected(self) -> None:
        """A faulty answer costs its own client a 502 and nothing more."""
        harness, origin = harness_for(self)
        waiting = harness.request(b"/slow", headers=Headers({b"x-n": [b"1"]}))
        slow = await origin.next_request()
        origin.answered[slow] += 1  # later
        response, _body, _index = await answered(
            harness, origin, b"HTTP/1.1 200 OK\nSet-Cookie: x=1\r\n\r\n")
        self.assertEqual(response.code, 502)
        origin.send(slow, GOOD, answers=False)
        response = await within(waiting)
        self.assertEqual((response.code, await read_body(response)), (200, b"good!"))


class _RawWsOrigin(Protocol):
    """Answers a WebSocket handshake with the factory's ``answer`` bytes, then closes."""

    @override
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(self.factory.answer)
            self.transport.loseConnection()


class WebSocketOriginTests(WsTestMixin, TestCase):
    async def test_handshake_refusal_status_we_cannot_relay(self) -> None:
        """A WebSocket origin refusing the handshake with an interim (1xx) or out-of-range
        status: relayed, the origin's body would be the client's next answer. A 502."""
        factory = Factory.forProtocol(_RawWsOrigin)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.start_handler(f"* 127.0.0.1:{port.getHost().port}")
        for answer in (b"HTTP/1.1 100 Continue\r\n\r\n" + FORGED,
                       b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"):
            factory.answer = answer
            response = await within(Agent(reactor).request(
                b"GET", b"http://127.0.0.1:%d/x" % self.port, Headers({
                    "Upgrade": ["websocket"], "Connection": ["Upgrade"],
                    "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
                    "Sec-WebSocket-Version": ["13"]})))
            self.assertEqual((response.code, await read_body(response)),
                             (502, b"Error while proxying to origin.\n"), answer)
            self.assertIsNone(response.headers.getRawHeaders(b"x-injected-by"))
