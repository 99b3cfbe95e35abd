"""outbound/origin_client.py against a raw origin on a loopback socket that answers exactly the
bytes each test gives it: framing, reuse, flow control, failures."""

from __future__ import annotations

import socket
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import BrowserLikePolicyForHTTPS, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from typing_extensions import override

from fanout_tx.outbound.origin import OriginEndpoints
from fanout_tx.outbound.origin_client import BadResponseError, OriginClient, split_url
from fanout_tx.outbound.tcp_options import quick_ack
from fanout_tx.transports.http.upload import UploadStream
from tests.support.helpers import TrackingFactory, wait_until
from tests.support.origin_client import Reader


class RawServer(Protocol):
    """One accepted connection: keeps what the client sent."""

    def __init__(self, connections: list[RawServer]) -> None:
        connections.append(self)
        self.received = b""
        self.answered = 0
        self.hang_up_on_next = False  # close, unanswered, when the next request comes
        self.lost: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.hang_up_on_next:
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)

    def requests(self) -> int:
        return self.received.count(b" HTTP/1.1\r\n")

    def waiting(self) -> bool:
        """A request head has come that has no answer yet."""
        received = self.received
        return (not self.hang_up_on_next and self.requests() > self.answered
                and received.rfind(b" HTTP/1.1\r\n") < received.rfind(b"\r\n\r\n"))


class RawServerAndClient:
    """A raw server and an OriginClient pointed at it."""

    def __init__(self, test: TestCase, idle_timeout: float = 240.0) -> None:
        self.connections: list[RawServer] = []
        self.factory = TrackingFactory(Factory.forProtocol(lambda: RawServer(self.connections)))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.client = OriginClient(
            reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()),
            idle_timeout=idle_timeout)
        test.addCleanup(self.close)

    def url(self, path: bytes = b"/") -> bytes:
        return b"http://127.0.0.1:%d%b" % (self.port.getHost().port, path)

    def request(self, method: bytes = b"GET", path: bytes = b"/", headers: Headers | None = None,
                body: object = None) -> Deferred:
        return self.client.request(method, self.url(path), headers, body)

    async def answer(self, data: bytes) -> RawServer:
        """Wait for a request head that has no answer yet, and answer it."""
        await wait_until(lambda: any(server.waiting() for server in self.connections))
        server = next(server for server in self.connections if server.waiting())
        server.answered += 1
        server.transport.write(data)
        return server

    async def begin(self, answer: bytes, **kwargs: object) -> tuple[RawServer, Any, Reader]:
        """A request answered with ``answer`` (maybe not all of it yet): the origin's side,
        the response, and a reader already given its body."""
        pending = self.request(**kwargs)  # type: ignore[arg-type]
        server = await self.answer(answer)
        response = await pending
        reader = Reader()
        response.deliverBody(reader)
        return server, response, reader

    async def fetch(self, answer: bytes, **kwargs: object) -> tuple[object, Reader, Failure]:
        _server, response, reader = await self.begin(answer, **kwargs)
        await reader.ended
        return response, reader, reader.reason

    async def close(self) -> None:
        await self.client.closeCachedConnections()
        for server in self.connections:
            server.transport.abortConnection()
        await self.port.stopListening()
        await self.factory.wait_closed()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class FramingTests(TestCase):
    async def test_content_length_and_reuse(self) -> None:
        """A Content-Length body; the next request reuses the connection."""
        origin = RawServerAndClient(self)
        response, reader, ended = await origin.fetch(
            b"HTTP/1.1 203 Fine Thanks\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n"
            b"Connection: keep-alive\r\n\r\nhello")
        self.assertEqual((response.code, response.phrase, response.length),
                         (203, b"Fine Thanks", 5))
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1", b"2"])
        for hidden in (b"content-length", b"connection"):
            self.assertIsNone(response.headers.getRawHeaders(hidden))
        self.assertEqual(reader.body, b"hello")
        ended.trap(ResponseDone)
        _response, reader, _ended = await origin.fetch(OK)
        self.assertEqual(reader.body, b"hello")
        self.assertEqual(len(origin.connections), 1)
        self.assertEqual(origin.connections[0].requests(), 2)

    async def test_chunked_with_extensions_and_trailers(self) -> None:
        origin = RawServerAndClient(self)
        response, reader, ended = await origin.fetch(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        self.assertIs(response.length, UNKNOWN_LENGTH)
        self.assertEqual(reader.body, b"hello world")
        ended.trap(ResponseDone)
        await origin.fetch(OK)
        self.assertEqual(len(origin.connections), 1)

    async def test_body_until_close(self) -> None:
        """No length: the body ends with the connection, which is not reused."""
        origin = RawServerAndClient(self)
        server, _response, reader = await origin.begin(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        server.transport.write(b"part two")
        server.transport.loseConnection()
        await reader.ended
        reader.reason.trap(PotentialDataLoss)
        self.assertEqual(reader.body, b"part one, part two")

    async def test_bodyless_answers(self) -> None:
        """HEAD (with a Content-Length), 204 and 304 have no body; their connection is not
        reused (a body written after one anyway would be read as the next answer)."""
        origin = RawServerAndClient(self)
        response, reader, ended = await origin.fetch(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", method=b"HEAD")
        self.assertEqual((response.length, reader.body), (0, b""))
        ended.trap(ResponseDone)
        for status in (b"204 No Content", b"304 Not Modified"):
            _response, reader, _reason = await origin.fetch(b"HTTP/1.1 %b\r\n\r\n" % status)
        reader.reason.trap(ResponseDone)
        self.assertEqual(len(origin.connections), 3)

    async def test_informational_answer_skipped(self) -> None:
        origin = RawServerAndClient(self)
        response, reader, _ended = await origin.fetch(
            b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 200 OK\r\n"
            b"X-Long: a b\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual((response.code, reader.body), (200, b"ok"))
        self.assertEqual(response.headers.getRawHeaders(b"x-long"), [b"a b"])
        self.assertIsNone(response.headers.getRawHeaders(b"x-interim"))
        await origin.fetch(OK)
        self.assertEqual(len(origin.connections), 1)

    async def test_folded_header_and_empty_line_before_status_refused(self) -> None:
        """Obsolete line folding (llhttp refuses it; RFC 9112 5.2 lets a proxy answer 502
        instead of unfolding), and an empty line before a status line, first or after an
        interim answer (llhttp skips those; a framing error all the same)."""
        origin = RawServerAndClient(self)
        for answer in (b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 2\r\n\r\nok",
                       b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                       b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\n"
                       b"Content-Length: 2\r\n\r\nok"):
            pending = origin.request()
            server = await origin.answer(answer)
            await self.assertFailure(pending, BadResponseError)
            await server.lost

    async def test_connection_close_and_http_1_0_not_reused(self) -> None:
        origin = RawServerAndClient(self)
        await origin.fetch(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await origin.fetch(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # llhttp alone would keep this one (an HTTP/1.0 keep-alive wins over close there)
        await origin.fetch(b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n"
                           b"Content-Length: 2\r\n\r\nok")
        await origin.fetch(OK)
        self.assertEqual(len(origin.connections), 4)

    async def test_request_head(self) -> None:
        """Method, target with query, headers in order, Host from the URL when absent."""
        origin = RawServerAndClient(self)
        pending = origin.request(path=b"/a/b?x=1", headers=Headers({b"X-One": [b"1", b"2"]}))
        server = await origin.answer(OK)
        await pending
        head = server.received.decode()
        self.assertTrue(head.startswith("GET /a/b?x=1 HTTP/1.1\r\n"), head)
        self.assertIn("X-One: 1\r\nX-One: 2\r\n", head)
        self.assertIn(f"Host: 127.0.0.1:{origin.port.getHost().port}\r\n", head)


class BodyTests(TestCase):
    async def test_known_length_body(self) -> None:
        origin = RawServerAndClient(self)
        pending = origin.request(b"POST", body=FileBodyProducer(BytesIO(b"x" * 70000)))
        await wait_until(lambda: origin.connections
                         and origin.connections[0].received.endswith(b"x" * 100))
        server = origin.connections[0]
        self.assertIn(b"Content-Length: 70000\r\n\r\n", server.received)
        self.assertEqual(len(server.received.partition(b"\r\n\r\n")[2]), 70000)
        server.transport.write(OK)
        await pending

    async def test_unknown_length_body_is_chunked(self) -> None:
        origin = RawServerAndClient(self)
        upload = UploadStream(None, _NoFlow())
        upload.feed(b"first")
        pending = origin.request(b"POST", body=upload)
        await wait_until(lambda: origin.connections
                         and origin.connections[0].received.endswith(b"5\r\nfirst\r\n"))
        upload.feed(b"second")
        upload.finish()
        server = origin.connections[0]
        await wait_until(lambda: server.received.endswith(b"6\r\nsecond\r\n0\r\n\r\n"))
        self.assertIn(b"Transfer-Encoding: chunked\r\n", server.received)
        server.transport.write(OK)
        await pending

    async def test_early_answer_stops_the_body(self) -> None:
        """Answered while the body is still coming: the body stops, the connection closes."""
        origin = RawServerAndClient(self)
        upload = UploadStream(1000, _NoFlow())
        upload.feed(b"x" * 10)
        pending = origin.request(b"POST", body=upload)
        await wait_until(lambda: origin.connections
                         and origin.connections[0].received.endswith(b"x" * 10))
        origin.connections[0].transport.write(OK)
        response = await pending
        reader = Reader()
        response.deliverBody(reader)
        await reader.ended
        reader.reason.trap(ResponseDone)
        await origin.connections[0].lost
        upload.feed(b"more")  # dropped, no error

    async def test_failing_body_fails_the_request(self) -> None:
        origin = RawServerAndClient(self)
        upload = UploadStream(None, _NoFlow())
        pending = origin.request(b"POST", body=upload)
        await wait_until(lambda: bool(origin.connections)
                         and b"\r\n\r\n" in origin.connections[0].received)
        upload.fail(ValueError("too large"))
        failure = await self.assertFailure(pending, ValueError)
        self.assertEqual(str(failure), "too large")


class FlowAndFailureTests(TestCase):
    async def test_reader_pauses_and_resumes(self) -> None:
        origin = RawServerAndClient(self)
        server, _response, reader = await origin.begin(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nabcd")
        await wait_until(lambda: reader.body == b"abcd")
        reader.transport.pauseProducing()
        server.transport.write(b"efgh")
        await wait_until(lambda: server.transport.dataBuffer == b""
                         and not server.transport._tempDataBuffer)
        self.assertEqual(reader.body, b"abcd")
        reader.transport.resumeProducing()
        await reader.ended
        reader.reason.trap(ResponseDone)
        self.assertEqual(reader.body, b"abcdefgh")

    async def test_garbage_answers(self) -> None:
        origin = RawServerAndClient(self)
        for garbage in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"):
            pending = origin.request()
            await origin.answer(garbage)
            await self.assertFailure(pending, BadResponseError)
        pending = origin.request()
        await origin.answer(b"x" * 70000)
        await self.assertFailure(pending, BadResponseError)

    async def test_bad_chunk_fails_the_body(self) -> None:
        """Chunk sizes are strict hex: what Python's int() would also take is refused."""
        origin = RawServerAndClient(self)
        for size in (b"zz", b"+5", b"0x5", b"1_0", b"-1"):
            _response, reader, ended = await origin.fetch(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n%b\r\n"
                % size)
            ended.trap(ResponseFailed)
            self.assertEqual(reader.body, b"abc")

    async def test_reset_mid_body_and_before_answer(self) -> None:
        origin = RawServerAndClient(self)
        server, _response, reader = await origin.begin(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        server.transport.abortConnection()
        await reader.ended
        reader.reason.trap(ResponseFailed)
        pending = origin.request()
        await wait_until(lambda: len(origin.connections) == 2
                         and origin.connections[1].requests() == 1)
        origin.connections[1].transport.loseConnection()
        await self.assertFailure(pending, ResponseNeverReceived)

    async def test_stale_idle_connection_retried_for_get_only(self) -> None:
        """The origin closes a kept-alive connection just as it is reused (no answer, not
        a byte): a GET goes again on a new connection; a POST with a body fails rather
        than risk being sent twice."""
        origin = RawServerAndClient(self)
        await origin.fetch(OK)
        origin.connections[0].hang_up_on_next = True
        _response, reader, _reason = await origin.fetch(OK)
        self.assertEqual(reader.body, b"hello")
        self.assertEqual(len(origin.connections), 2)
        self.assertEqual(origin.connections[0].requests(), 2)
        origin.connections[1].hang_up_on_next = True
        pending = origin.request(b"POST", body=FileBodyProducer(BytesIO(b"once")))
        await self.assertFailure(pending, ResponseNeverReceived)
        self.assertEqual(len(origin.connections), 2)

    async def test_no_resend_when_asked_not_to(self) -> None:
        """``resend_stale=False`` (webhooks: a retry is the engine's decision): the same
        stale GET fails instead."""
        origin = RawServerAndClient(self)
        origin.client.resend_stale = False
        await origin.fetch(OK)
        origin.connections[0].hang_up_on_next = True
        await self.assertFailure(origin.request(), ResponseNeverReceived)
        self.assertEqual(len(origin.connections), 1)

    async def test_endpoints_per_request(self) -> None:
        """A client without default endpoints takes them with each request."""
        origin = RawServerAndClient(self)
        client = OriginClient(reactor, None)
        self.addCleanup(client.closeCachedConnections)
        self.assertRaises(ValueError, client.request, b"GET", origin.url())
        pending = client.request(b"GET", origin.url(),
                                 endpoints=OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()))
        await origin.answer(OK)
        response = await pending
        self.assertEqual(response.code, 200)
        reader = Reader()
        response.deliverBody(reader)
        await reader.ended

    async def test_cancel(self) -> None:
        origin = RawServerAndClient(self)
        pending = origin.request()
        await wait_until(lambda: bool(origin.connections) and origin.connections[0].requests())
        pending.cancel()
        await self.assertFailure(pending, CancelledError)
        await origin.connections[0].lost

    async def test_idle_connections_time_out(self) -> None:
        origin = RawServerAndClient(self, idle_timeout=0.05)
        await origin.fetch(OK)
        await origin.connections[0].lost


class SplitUrlTests(TestCase):
    def test_forms(self) -> None:
        address, authority, target = split_url(b"http://[::1]:8080/p?q=1")
        self.assertEqual((address.host, address.port, authority, target),
                         (b"::1", 8080, b"[::1]:8080", b"/p?q=1"))
        self.assertEqual(split_url(b"https://example.com")[0].port, 443)
        self.assertEqual(split_url(b"http://example.com?x")[2], b"/?x")
        self.assertRaises(ValueError, split_url, b"ftp://example.com/")


class _NoFlow:
    """A client side that needs no flow control (the test feeds the body itself)."""

    def pauseProducing(self) -> None:  # noqa: N802
        """Nothing to pause."""

    def resumeProducing(self) -> None:  # noqa: N802
        """Nothing to resume."""

    def stopProducing(self) -> None:  # noqa: N802
        """Nothing to stop."""


class SocketOptionTests(TestCase):
    async def test_origin_connections_skip_nagle_and_delayed_acks(self) -> None:
        """Origin sockets: TCP_NODELAY on, and a quick-ack call armed for reads (an
        origin writing head and body in two sends would otherwise wait 40 ms for our ACK
        on a kept-alive connection)."""
        origin = RawServerAndClient(self)
        await origin.fetch(OK)
        [connection] = origin.client._idle[split_url(origin.url())[0]]
        handle = connection.transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertIsNotNone(connection._quick_ack)

    async def test_quick_ack_only_while_an_answer_is_incomplete(self) -> None:
        """The quick ACK (a setsockopt) is asked for after a read that leaves the answer
        unfinished, when the origin may wait for our ACK before the rest; an answer read
        whole costs none."""
        origin = RawServerAndClient(self)
        await origin.fetch(OK)
        [connection] = origin.client._idle[split_url(origin.url())[0]]
        calls: list[None] = []
        connection._quick_ack = lambda: calls.append(None)
        await origin.fetch(OK)
        self.assertEqual(calls, [])
        server, _response, reader = await origin.begin(OK[:-2])
        await wait_until(lambda: calls)
        server.transport.write(OK[-2:])
        await reader.ended
        self.assertEqual((reader.body, len(calls)), (b"hello", 1))

    async def test_request_head_sent_at_once(self) -> None:
        """A request head goes to the kernel from ``send`` itself (no transport ``write``, so
        no writability registration and no reactor turn) when nothing is queued ahead."""
        origin = RawServerAndClient(self)
        await origin.fetch(OK)
        [connection] = origin.client._idle[split_url(origin.url())[0]]
        queued: list[bytes] = []
        self.patch(connection.transport, "write", queued.append)
        response, reader, _reason = await origin.fetch(OK, path=b"/again")
        self.assertEqual((response.code, reader.body, queued), (200, b"hello", []))
        self.assertIn(b"GET /again HTTP/1.1\r\n", origin.connections[0].received)

    def test_quick_ack_only_for_tcp(self) -> None:
        self.assertIsNone(quick_ack(object()))
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        self.assertIsNone(quick_ack(_Handle(left)))  # a UNIX socket
        tcp = socket.socket()
        self.addCleanup(tcp.close)
        acknowledge = quick_ack(_Handle(tcp))
        assert acknowledge is not None
        acknowledge()  # not connected: the error is swallowed


class _Handle:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getHandle(self) -> socket.socket:  # noqa: N802
        return self._sock
