"""Request bodies streamed to the origin (transports/http/upload.py via transports/http/proxy.py): a
raw client on a socket -> the proxy -> a raw origin that sees the body bytes as they arrive."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override

from fanout_tx.outbound.origin import ProxySettings
from fanout_tx.transports.http.upload import REPLAY_LIMIT, UploadInterruptedError, UploadStream
from tests.support.helpers import RawClient, TrackingFactory, wait_until
from tests.support.proxy_fixtures import ProxyHarness
from tests.support.services import free_port


class RawOrigin(Protocol):
    """An origin on a bare socket: keeps the request head and the body bytes as they come."""

    def __init__(self, origins: list[RawOrigin]) -> None:
        origins.append(self)
        self.head = b""
        self.body = bytearray()
        self.head_done = False
        self.lost: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.head_done:
            self.body += data
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.head_done = True
            self.head, _sep, rest = self.head.partition(b"\r\n\r\n")
            self.body += rest

    @override
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)

    def answer(self, body: bytes, head: bytes = b"") -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b"
                             % (len(body), head, body))


class Upload:
    """A proxy whose route points at a RawOrigin, and raw client connections to it."""

    def __init__(self, test: TestCase, settings: ProxySettings | None = None,
                 extra_targets: str = "") -> None:
        self.proxy = ProxyHarness(test, settings=settings)
        self.origins: list[RawOrigin] = []
        self.factory = TrackingFactory(Factory.forProtocol(lambda: RawOrigin(self.origins)))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.proxy.set_routes(f"* {extra_targets}127.0.0.1:{self.port.getHost().port}")
        self.clients: list[RawClient] = []
        test.addCleanup(self.close)

    async def connect(self, head: bytes) -> RawClient:
        port = self.proxy.proxy_port.getHost().port
        client = await ClientCreator(reactor, RawClient).connectTCP("127.0.0.1", port)
        self.clients.append(client)
        client.transport.write(head)
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.transport.abortConnection()
        for origin in self.origins:
            origin.transport.abortConnection()
        await self.port.stopListening()
        await self.factory.wait_closed()


def post(length: int | None, extra: bytes = b"") -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"POST /up HTTP/1.1\r\nHost: example.com\r\n%b\r\n%b\r\n" % (framing, extra)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class StreamedUploadTests(TestCase):
    async def test_origin_gets_the_body_while_it_arrives(self) -> None:
        """The origin request starts before the client has sent its whole body, and the
        origin sees the first part while the client still holds the rest."""
        upload = Upload(self)
        body = os.urandom(1_000_000)
        client = await upload.connect(post(len(body)) + body[:300_000])
        await wait_until(lambda: upload.origins and len(upload.origins[0].body) >= 300_000)
        origin = upload.origins[0]
        self.assertIn(b"content-length: 1000000", origin.head.lower())
        self.assertEqual(origin.body, body[:300_000])
        client.transport.write(body[300_000:])
        await wait_until(lambda: len(origin.body) == len(body))
        self.assertEqual(hashlib.sha256(origin.body).digest(), hashlib.sha256(body).digest())
        origin.answer(b"thanks")
        await wait_until(lambda: client.data.endswith(b"thanks"))
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 OK\r\n"))

    async def test_chunked_upload_streams_in_chunks(self) -> None:
        """A chunked body past the replay limit reaches the origin before it ends."""
        upload = Upload(self)
        part = b"p" * (REPLAY_LIMIT + 1)
        client = await upload.connect(post(None) + chunk(part))
        await wait_until(lambda: upload.origins and dechunk(upload.origins[0].body)[0] == part)
        origin = upload.origins[0]
        self.assertIn(b"transfer-encoding: chunked", origin.head.lower())
        client.transport.write(chunk(b"tail") + b"0\r\n\r\n")
        await wait_until(lambda: dechunk(origin.body) == (part + b"tail", True))
        origin.answer(b"ok")
        await wait_until(lambda: client.data.endswith(b"\r\n\r\nok"))

    async def test_slow_origin_pauses_the_client(self) -> None:
        """An origin that stops reading makes the proxy stop reading the client: the
        client's bytes wait in the client's own buffer, not in the proxy's memory. When the
        origin reads again, every byte arrives intact."""
        upload = Upload(self)
        body = os.urandom(24 * 1024 * 1024)
        client = await upload.connect(post(len(body)))
        client.transport.write(body)
        await wait_until(lambda: bool(upload.origins))
        origin = upload.origins[0]
        origin.transport.pauseProducing()
        # Let the pipeline fill (kernel buffers on both hops) until the client's own
        # buffer stops draining for a while: the proxy has stopped reading.
        readings: list[int] = []

        def steady() -> bool:
            readings.append(unsent(client))
            return len(readings) > 30 and len(set(readings[-30:])) == 1

        await wait_until(steady, timeout=30)
        self.assertGreater(readings[-1], 8 * 1024 * 1024)
        origin.transport.resumeProducing()
        await wait_until(lambda: len(origin.body) == len(body), timeout=60)
        self.assertEqual(hashlib.sha256(origin.body).digest(), hashlib.sha256(body).digest())
        origin.answer(b"done")
        await wait_until(lambda: client.data.endswith(b"done"))

    async def test_grip_instruction_for_streamed_body_is_400(self) -> None:
        """As Pushpin: a body too large to keep cannot be held (no re-request possible)."""
        upload = Upload(self)
        body = b"b" * (REPLAY_LIMIT + 10)
        client = await upload.connect(post(len(body)) + body)
        await wait_until(lambda: upload.origins and len(upload.origins[0].body) == len(body))
        upload.origins[0].answer(b"", b"Grip-Hold: response\r\nGrip-Channel: c\r\n")
        await wait_until(lambda: b"Request too large to accept GRIP instruct." in client.data)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 400 "))

    async def test_chunked_body_over_limit_mid_stream_is_413(self) -> None:
        """A chunked body found to be over ``max_request_body`` while it streams aborts the
        origin request; the client gets a 413 and the connection is closed."""
        upload = Upload(self, ProxySettings(max_request_body=300_000))
        client = await upload.connect(post(None) + chunk(b"a" * 200_000))
        await wait_until(lambda: bool(upload.origins))
        client.transport.write(chunk(b"b" * 200_000))
        await upload.origins[0].lost
        data = await client.closed
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:40])
        self.assertIn(b"Request body too large.", data)

    async def test_client_gone_mid_body_aborts_origin_request(self) -> None:
        """A client that leaves mid-upload: the origin connection is dropped, and the next
        client is served as usual."""
        upload = Upload(self)
        client = await upload.connect(post(1_000_000) + b"x" * 200_000)
        await wait_until(lambda: upload.origins and len(upload.origins[0].body) == 200_000)
        client.transport.abortConnection()
        await upload.origins[0].lost
        second = await upload.connect(post(REPLAY_LIMIT + 1) + b"y" * (REPLAY_LIMIT + 1))
        await wait_until(lambda: len(upload.origins) == 2
                         and len(upload.origins[1].body) == REPLAY_LIMIT + 1)
        upload.origins[1].answer(b"fine")
        await wait_until(lambda: second.data.endswith(b"fine"))

    async def test_early_answer_then_connection_reused(self) -> None:
        """An origin may answer before the body is complete: the client gets the answer at
        once, and once its body is sent the same connection serves the next request."""
        upload = Upload(self)
        client = await upload.connect(post(400_000) + b"z" * 150_000)
        await wait_until(lambda: upload.origins and len(upload.origins[0].body) == 150_000)
        upload.origins[0].answer(b"early")
        await wait_until(lambda: client.data.endswith(b"early"))
        client.transport.write(b"z" * 250_000)
        client.transport.write(post(5) + b"small")
        await wait_until(lambda: len(upload.origins) == 2 and upload.origins[1].body == b"small")
        upload.origins[1].answer(b"second")
        await wait_until(lambda: client.data.endswith(b"second"))
        self.assertEqual(client.data.count(b"HTTP/1.1 200 OK"), 2)

    async def test_expect_100_continue(self) -> None:
        """The client gets its 100 Continue first, then the streamed answer."""
        upload = Upload(self)
        body = b"e" * 200_000
        client = await upload.connect(post(len(body), b"Expect: 100-continue\r\n"))
        await wait_until(lambda: b"100 Continue" in client.data)
        client.transport.write(body)
        await wait_until(lambda: upload.origins and len(upload.origins[0].body) == len(body))
        upload.origins[0].answer(b"got it")
        await wait_until(lambda: client.data.endswith(b"got it"))
        self.assertTrue(client.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"))

    async def test_failover_keeps_a_streamed_body(self) -> None:
        """A first target that refuses the connection: the streamed body, never started,
        goes whole to the next target."""
        upload = Upload(self, extra_targets=f"127.0.0.1:{free_port()} ")
        body = os.urandom(500_000)
        client = await upload.connect(post(len(body)) + body)
        await wait_until(lambda: upload.origins and len(upload.origins[0].body) == len(body))
        self.assertEqual(upload.origins[0].body, body)
        upload.origins[0].answer(b"second target")
        await wait_until(lambda: client.data.endswith(b"second target"))


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The complete chunks of a chunked body so far, and whether its last chunk came."""
    out = b""
    while b"\r\n" in data:
        size_line, _sep, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            break
        out, data = out + rest[:size], rest[size + 2:]
    return out, False


def unsent(client: RawClient) -> int:
    """Bytes the client's transport still holds because the peer is not reading."""
    transport = client.transport
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class UploadStreamTests(SynchronousTestCase):
    def test_start_after_the_client_failed_fails_the_origin_request(self) -> None:
        """An origin connection that starts reading a body the client already abandoned
        gets the failure (not an AttributeError from the producer)."""
        upload = UploadStream(None, StringTransport())
        upload.fail(UploadInterruptedError("client gone"))
        started = upload.startProducing(StringTransport())
        self.failureResultOf(started, UploadInterruptedError)
