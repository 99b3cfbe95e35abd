"""The autobahn adapter over an in-memory transport: prepared sends, the bounded outbound
buffer, server-side close codes."""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fanout_tx.config.settings import Config, WebsocketConfig
from fanout_tx.core.formats.ws import parse_ws_message
from fanout_tx.transports.write_batch import WriteBatch
from fanout_tx.transports.ws.grip import Accepted, WsClient
from fanout_tx.transports.ws.protocol import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_OUTBOUND,
    ClientFactory,
    ClientProtocol,
)
from fanout_tx.transports.ws.service import client_factory

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RecordingSession:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def attach(self, client: ClientProtocol) -> None:
        self.calls.append(("attach",))

    def client_message(self, payload: bytes, binary: bool) -> None:
        self.calls.append(("message", payload, binary))

    def client_ping(self, payload: bytes) -> None:
        self.calls.append(("ping", payload))

    def client_pong(self, payload: bytes) -> None:
        self.calls.append(("pong", payload))

    def client_closed(self, code: int | None, reason: str) -> None:
        self.calls.append(("closed", code, reason))

    def client_lost(self) -> None:
        self.calls.append(("lost",))


def close_code(frame_bytes: bytes) -> int:
    """The code of the close frame at the end of ``frame_bytes`` (server frames: unmasked)."""
    start = frame_bytes.rindex(b"\x88")
    return struct.unpack("!H", frame_bytes[start + 2 : start + 4])[0]


class ProtocolTests(SynchronousTestCase):
    def connect(self, max_outbound: int = 1000, clock: Clock | None = None,
                ) -> tuple[ClientProtocol, StringTransport, RecordingSession]:
        factory = ClientFactory(max_message=1000, max_outbound=max_outbound,
                                clock=clock or Clock(),
                                batch=WriteBatch(clock) if clock is not None else None)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        session = RecordingSession()
        protocol.session = session
        protocol.accepted = Accepted("chat", {"Set-Cookie": ["a=1"]})
        transport = StringTransport()
        transport.registerProducer(object(), True)  # as twisted.web's HTTPChannel leaves it
        protocol.makeConnection(transport)
        protocol.dataReceived(HANDSHAKE)
        self.factory = factory
        return protocol, transport, session

    def test_handshake_carries_origin_headers(self) -> None:
        """The 101 has the origin's extra headers; a subprotocol the client did not offer
        is left out; the session is attached once open."""
        _protocol, transport, session = self.connect()
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 101"))
        self.assertIn(b"Set-Cookie: a=1\r\n", response)
        self.assertNotIn(b"Sec-WebSocket-Protocol", response)
        self.assertEqual(session.calls, [("attach",)])

    def test_prepared_message_written_as_is(self) -> None:
        """A prepared message is framed once by the factory and written unchanged."""
        protocol, transport, _session = self.connect()
        transport.clear()
        prepared = self.factory.render(parse_ws_message({"content": "hello"}))
        protocol.send_prepared(prepared)
        self.assertEqual(transport.value(), b"\x81\x05hello")
        self.assertIsNone(self.factory.render(parse_ws_message({"type": "ping"})))

    def test_published_frames_coalesced_per_turn(self) -> None:
        """With a clock, frames published in one reactor turn are written next turn as one
        buffer, in order; any other send (here a close) writes the queue first."""
        clock = Clock()
        protocol, transport, _session = self.connect(clock=clock)
        transport.clear()
        writes: list[bytes] = []
        transport.write = writes.append  # count transport writes, not just bytes
        for text in ("one", "two"):
            protocol.send_prepared(self.factory.render(parse_ws_message({"content": text})))
        self.assertEqual(writes, [])
        clock.advance(0)
        self.assertEqual(writes, [b"\x81\x03one\x81\x03two"])
        protocol.send_prepared(self.factory.render(parse_ws_message({"content": "three"})))
        protocol.close(4000, "bye")
        self.assertEqual(writes[1], b"\x81\x05three")
        self.assertEqual(close_code(writes[2]), 4000)
        clock.advance(0)
        self.assertEqual(len(writes), 3)

    def test_slow_reader_closed_1008(self) -> None:
        """While the transport is paused, sends are counted; past the limit the client is
        closed with 1008 and further sends are dropped. A client that never answers the
        close is reported lost (autobahn's close timeout drops it)."""
        protocol, transport, session = self.connect(max_outbound=100)
        protocol.guard.pauseProducing()
        protocol.send_message(b"x" * 60, False)
        protocol.send_message(b"y" * 60, False)
        self.assertEqual(close_code(transport.value()), 1008)
        transport.clear()
        protocol.send_message(b"z", False)
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(session.calls[-1], ("lost",))

    def test_resume_resets_the_count(self) -> None:
        protocol, transport, _session = self.connect(max_outbound=100)
        protocol.guard.pauseProducing()
        protocol.send_message(b"x" * 60, False)
        protocol.guard.resumeProducing()
        protocol.guard.pauseProducing()
        protocol.send_message(b"y" * 60, False)
        self.assertNotIn(b"\x88", transport.value())

    def test_server_close_codes(self) -> None:
        """1011 and other codes autobahn's sendClose refuses still go out as close frames."""
        protocol, transport, _session = self.connect()
        protocol.close(1011, "origin error")
        self.assertEqual(close_code(transport.value()), 1011)

    def test_invalid_frames_close_with_their_code(self) -> None:
        """An unmasked client frame gets 1002, invalid UTF-8 text gets 1007, an oversized
        message 1009; each is logged and the session hears the end."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        mask = b"\x00\x00\x00\x00"
        for frame, code in [
            (b"\x81\x02hi", 1002),
            (b"\x81\x82" + mask + b"\xff\xfe", 1007),
            (b"\x82\xfe\x07\xd0" + mask + b"x" * 2000, 1009),
        ]:
            protocol, transport, session = self.connect()
            transport.clear()
            protocol.dataReceived(frame)
            self.assertEqual(close_code(transport.value()), code)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(session.calls[-1], ("lost",))
            ours = [e for e in logged if "bad input" in e.get("log_format", "")]
            self.assertEqual(ours[-1]["code"], code)

    def test_implements_ws_client(self) -> None:
        """ClientProtocol has every WsClient method; pause/resume reach the transport."""
        members = {n for n in vars(WsClient) if not n.startswith("_")}
        self.assertEqual(members - set(dir(ClientProtocol)), set())
        protocol, transport, _session = self.connect()
        protocol.pause_reading()
        self.assertEqual(transport.producerState, "paused")
        protocol.resume_reading()
        self.assertEqual(transport.producerState, "producing")

    def test_follow_writes(self) -> None:
        """A follower is paused and resumed with the client's write buffer, at once when
        it is full already, and resumed for good when the connection ends."""
        protocol, _transport, _session = self.connect()
        follower = RecordingProducer()
        protocol.guard.pauseProducing()
        protocol.follow_writes(follower)
        protocol.guard.resumeProducing()
        protocol.guard.pauseProducing()
        protocol.guard.stopProducing()
        self.assertEqual(follower.calls, ["pause", "resume", "pause", "stop"])

    def test_limits_from_config(self) -> None:
        """[websocket] max_message and max_outbound reach the factory every client uses."""
        config = Config(websocket=WebsocketConfig(max_message=10, max_outbound=20))
        factory = client_factory(config, Clock())
        self.assertEqual((factory.max_message, factory.maxMessagePayloadSize,
                          factory.maxFramePayloadSize, factory.max_outbound), (10, 10, 10, 20))
        default = client_factory(Config(), Clock())
        self.assertEqual((default.max_message, default.max_outbound),
                         (DEFAULT_MAX_MESSAGE, DEFAULT_MAX_OUTBOUND))


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.calls.append("pause")

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.calls.append("resume")

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.calls.append("stop")
