"""Flow control in plain WebSocket proxying, over real loopback sockets: an autobahn client
-> the proxy -> an autobahn origin, one side of which stops reading."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from typing_extensions import override

from tests.support.helpers import wait_until
from tests.support.ws import WsTestMixin, listen_endpoint

COUNT = 100
SIZE = 100_000  # 10 MB in all, more than the loopback socket buffers on the stalled hop take
# What the proxy may hold for one connection: Twisted pauses its producer past 64 KiB
# buffered, and the messages already read by then (one socket read, one unfinished
# message) still go out.
BOUND = 65_536 + 2 * SIZE + 65_536


def message(n: int) -> bytes:
    return b"%06d" % n + b"x" * (SIZE - 6)


def buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds in this process, not yet given to the kernel."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class Peak:
    """Records the most ``transport`` ever held right after a write to it."""

    def __init__(self, transport: Any) -> None:
        self.most = buffered(transport)
        write = transport.write

        def counting_write(data: bytes) -> None:
            write(data)
            self.most = max(self.most, buffered(transport))

        transport.write = counting_write


class Origin(WebSocketServerProtocol):
    """Records the messages it reads; with ``factory.stalled`` it stops reading once open;
    with ``factory.send`` it sends those messages once open."""

    @override
    def onOpen(self) -> None:  # noqa: N802
        self.factory.connection = self
        if self.factory.stalled:
            self.transport.pauseProducing()
        for payload in self.factory.send:
            self.sendMessage(payload, isBinary=True)

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.factory.received.append(payload)
        if len(self.factory.received) == COUNT:
            self.factory.all_received.callback(self.factory.received)


class BackpressureTests(WsTestMixin, TestCase):
    timeout = 60

    async def start_origin(self, stalled: bool = False, send: tuple[bytes, ...] = ()) -> None:
        self.origin_side = WebSocketServerFactory()
        self.origin_side.protocol = Origin
        self.origin_side.setProtocolOptions(maxMessagePayloadSize=SIZE,
                                            maxFramePayloadSize=SIZE)
        self.origin_side.stalled = stalled
        self.origin_side.send = send
        self.origin_side.received = []
        self.origin_side.all_received = Deferred()
        port = await listen_endpoint().listen(self.origin_side)
        self.addCleanup(port.stopListening)
        await self.start_handler(f"* 127.0.0.1:{port.getHost().port}")

    async def test_slow_origin_pauses_the_client(self) -> None:
        """A client sending faster than the origin reads: the proxy stops reading the
        client while the origin connection's buffer is full, so it never holds more than
        BOUND bytes for it; once the origin reads again every message arrives, in order."""
        await self.start_origin(stalled=True)
        side, client = await self.connect("/ws")
        (session,) = self.handler.sessions
        to_origin = session._origin.transport
        peak = Peak(to_origin)
        for n in range(COUNT):
            client.sendMessage(message(n), isBinary=True)
        await wait_until(lambda: session.client_held)
        self.assertLessEqual(buffered(to_origin), BOUND)
        self.origin_side.connection.transport.resumeProducing()
        received = await self.origin_side.all_received
        self.assertEqual(received, [message(n) for n in range(COUNT)])
        self.assertLessEqual(peak.most, BOUND)
        self.assertFalse(session.client_held)

    async def test_slow_client_pauses_the_origin(self) -> None:
        """An origin sending faster than the client reads: the proxy stops reading the
        origin instead of queueing for the client (which would end in a 1008 close past
        1 MB); once the client reads again every message arrives, in order."""
        await self.start_origin(send=tuple(message(n) for n in range(COUNT)))
        side, client = await self.connect("/ws")
        client.transport.pauseProducing()
        (session,) = self.handler.sessions
        to_client = session._client.transport
        peak = Peak(to_client)
        await wait_until(lambda: session.origin_held)
        self.assertLessEqual(buffered(to_client), BOUND)
        client.transport.resumeProducing()
        received = await side.wait_messages(COUNT)
        self.assertEqual(received, [(message(n), True) for n in range(COUNT)])
        self.assertLessEqual(peak.most, BOUND)
        self.assertFalse(side.closed.called)
        self.assertFalse(session.origin_held)

    async def test_origin_lost_while_the_client_is_held(self) -> None:
        """The origin going away while the client is not read: the client is read again,
        so the 1011 close completes cleanly even behind the client's backlog."""
        await self.start_origin(stalled=True)
        side, client = await self.connect("/ws")
        (session,) = self.handler.sessions
        for n in range(COUNT):
            client.sendMessage(message(n), isBinary=True)
        await wait_until(lambda: session.client_held)
        self.origin_side.connection.transport.abortConnection()
        clean, code, _reason = await side.closed
        self.assertEqual((clean, code), (True, 1011))
        self.assertFalse(session.client_held)
