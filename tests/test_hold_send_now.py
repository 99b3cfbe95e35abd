"""transports/http/hold.py ``send_now``: a flush goes straight to the kernel only when nothing is
queued ahead of it on a plain TCP connection; otherwise the transport's own path."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fanout_tx.transports.http.hold import send_now
from tests.support.helpers import wait_until


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.made: Deferred[Collect] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.data += data

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802 - Twisted API
        self.lost.callback(None)


class SendNowTests(TestCase):
    async def connected_pair(self) -> tuple[Collect, Collect]:
        server = Collect()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              client)
        await server.made

        def close() -> Deferred[object]:
            client.transport.loseConnection()
            return DeferredList([server.lost, client.lost])

        self.addCleanup(close)
        return server, client

    async def test_empty_buffer_goes_straight_out(self) -> None:
        server, client = await self.connected_pair()
        self.assertEqual(send_now(server.transport, b"hello"), b"")
        self.assertEqual(server.transport._tempDataBuffer, [])
        await wait_until(lambda: client.data == b"hello")

    async def test_queued_data_keeps_its_place(self) -> None:
        server, client = await self.connected_pair()
        server.transport.write(b"first ")
        self.assertEqual(send_now(server.transport, b"second"), b"second")
        server.transport.write(b"second")
        await wait_until(lambda: client.data == b"first second")

    async def test_closing_connection_keeps_the_ordinary_path(self) -> None:
        server, _client = await self.connected_pair()
        server.transport.loseConnection()
        self.assertEqual(send_now(server.transport, b"late"), b"late")


class OtherTransportsTests(SynchronousTestCase):
    def test_test_transport_is_left_alone(self) -> None:
        transport = StringTransport()
        self.assertEqual(send_now(transport, b"data"), b"data")
        self.assertEqual(transport.value(), b"")
