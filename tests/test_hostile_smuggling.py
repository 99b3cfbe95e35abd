"""Request smuggling on the client port, through a real socket to a real origin on 127.0.0.1
that records every byte it receives: each ambiguous or malformed request is refused with a
400 (431 where it is about size) and the connection closed, and nothing of it reaches the
origin (transports/http/server_channel.py)."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.trial.unittest import TestCase
from typing_extensions import override

from tests.support.helpers import RawClient, with_deadline
from tests.support.proxy_fixtures import ProxyHarness


class RecordingOrigin(Protocol):
    """Records what arrives; answers each request head with a small 200."""

    received: list[bytes]

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


HEAD = b"Host: example.test\r\n"

REFUSED = {
    "CL+TE": b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: 6\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "TE+CL": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n"
             b"Content-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "conflicting CL": b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: 3\r\n"
                      b"Content-Length: 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\n\r\n",
    "duplicate CL": b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: 3\r\n"
                    b"Content-Length: 3\r\n\r\nabc",
    "CL list": b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: 3, 3\r\n\r\nabc",
    "CL sign": b"POST / HTTP/1.1\r\n" + HEAD + b"Content-Length: +3\r\n\r\nabc",
    "obs-fold": b"GET / HTTP/1.1\r\n" + HEAD + b"X-A: a\r\n b\r\n\r\n",
    "obs-fold TE": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding:\r\n chunked\r\n\r\n"
                   b"0\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\n" + HEAD + b"\n",
    "bare LF in headers": b"GET / HTTP/1.1\r\nHost: example.test\nX: y\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r" + HEAD + b"\r\n",
    "bare CR in a value": b"GET / HTTP/1.1\r\n" + HEAD + b"X: a\rb\r\n\r\n",
    "chunk-size overflow": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                           b"10000000000000001\r\na\r\n0\r\n\r\n",
    "xchunked": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: xchunked\r\n\r\n"
                b"0\r\n\r\n",
    "chunked, identity": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked, "
                         b"identity\r\n\r\n0\r\n\r\n",
    "identity": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: identity\r\n\r\nabc",
    "space before colon": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding : chunked\r\n"
                          b"\r\n0\r\n\r\n",
    "space in a name": b"GET / HTTP/1.1\r\n" + HEAD + b"X A: b\r\n\r\n",
    "NUL in a name": b"GET / HTTP/1.1\r\n" + HEAD + b"X\x00A: b\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\n" + HEAD + b"X: a\x00b\r\n\r\n",
    "several Host": b"GET / HTTP/1.1\r\n" + HEAD + b"Host: other.test\r\n\r\n",
    "bad chunk data end": b"POST / HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabcX\r\n0\r\n\r\n",
}


class SmugglingTests(TestCase):
    def setUp(self) -> None:
        self.proxy = ProxyHarness(self)
        self.received: list[bytes] = []
        factory = Factory.forProtocol(RecordingOrigin)
        factory.protocol.received = self.received  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.proxy.set_routes(f"* 127.0.0.1:{port.getHost().port}")

    async def send(self, data: bytes) -> bytes:
        """``data`` on a new connection to the proxy; what came back once it closed."""
        client = await ClientCreator(reactor, RawClient).connectTCP(
            "127.0.0.1", self.proxy.proxy_port.getHost().port)
        client.transport.write(data)
        return await with_deadline(client.closed, "the proxy to close the connection")

    async def test_each_refused_with_400_and_closed_nothing_forwarded(self) -> None:
        for name, data in REFUSED.items():
            answer = await self.send(data)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (name, answer))
            self.assertIn(b"\r\nConnection: close\r\n", answer, name)
            self.assertEqual(answer.count(b"HTTP/1.1 "), 1, name)
            self.assertEqual(self.received, [], name)

    async def test_head_too_large_431(self) -> None:
        for data in [b"GET / HTTP/1.1\r\n" + HEAD + b"X: " + b"a" * 20000 + b"\r\n\r\n",
                     b"GET / HTTP/1.1\r\n" + HEAD + b"".join(b"X-%d: y\r\n" % i
                                                            for i in range(200)) + b"\r\n",
                     b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + HEAD + b"\r\n"]:
            answer = await self.send(data)
            self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:80])
            self.assertEqual(self.received, [])

    async def test_pipelined_requests_after_an_error_are_not_forwarded(self) -> None:
        """The valid request before the bad one is answered; the bad one gets its 400 after
        that answer, and nothing behind it is read."""
        answer = await self.send(
            b"GET /first HTTP/1.1\r\n" + HEAD + b"\r\n"
            b"GET /bad HTTP/1.1\r\n" + HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n"
            b"GET /after HTTP/1.1\r\n" + HEAD + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertEqual(answer.count(b"HTTP/1.1 "), 2, answer)
        self.assertIn(b"HTTP/1.1 400 Bad Request\r\n", answer)
        self.assertTrue(answer.endswith(b"Bad request: Duplicate Content-Length.\n"), answer)
        forwarded = b"".join(self.received)
        self.assertIn(b"GET /first ", forwarded)
        self.assertNotIn(b"/bad", forwarded)
        self.assertNotIn(b"/after", forwarded)

    async def test_version_other_than_1_x_505(self) -> None:
        answer = await self.send(b"GET / HTTP/2.0\r\n" + HEAD + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 505 "), answer)
        self.assertEqual(self.received, [])
