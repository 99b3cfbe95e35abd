"""The origin pool's rule, as a property of outbound/origin_client.py's public behaviour over
in-memory transports: a connection goes back to the pool only when its answer ended exactly
at a message boundary and nothing else arrived, and no byte of one exchange is ever seen by
another. Origins here answer validly, then misbehave at random: bytes past the answer
(a late body after HEAD/204/304, an answer-shaped forgery, noise), ``Connection: close``,
an early close, splits at any point, a reader that pauses or takes the body late, and a
reactor that reports a close only after the next request began.

Only requests, answers, bodies and which connection a request goes out on are observed, so
this holds for any parser behind the client (the llhttp swap included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from fanout_tx.outbound.origin_client import OriginClient
from tests.support.origin_client import MemoryEndpoints, Reader, pieces

FORGED = b"HTTP/1.1 200 OK\r\nX-Injected-By: attacker\r\nContent-Length: 6\r\n\r\nforged"


@dataclass
class Exchange:
    method: bytes
    code: int
    body: bytes  # what the reader must get
    wire: bytes  # the answer on the wire
    extra: bytes  # what the origin writes past the answer
    close_after: bool  # the origin closes once it has written everything
    cut_short: int | None  # the origin closes after this many bytes of the answer
    clean: bool  # the connection may be reused afterwards
    cuts: list[int]
    pause: bool  # the reader pauses at its first bytes and resumes once all are in
    late_reader: bool  # deliverBody only once all bytes are in
    lost_later: bool  # the reactor reports a close only after the next request began


@st.composite
def exchanges(draw: Any) -> Exchange:
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD"]))
    code = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    bodyless = method == b"HEAD" or code in (204, 304)
    close_header = draw(st.booleans()) and draw(st.booleans())
    head = [b"HTTP/1.1 %d Some Reason" % code, b"X-Exchange: yes"]
    if close_header:
        head.append(b"Connection: close")
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        wire_body = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        half = len(body) // 2
        wire_body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:half], body[half:])
                             if p) + b"0\r\n\r\n"
    else:
        wire_body = body
    # What a buggy origin writes past its answer: the body it owed nobody, a forgery, noise.
    extra = draw(st.one_of(st.just(b""), st.just(b""), st.just(FORGED),
                           st.just(b"\r\n"), st.binary(min_size=1, max_size=20)))
    if bodyless:
        wire = b"\r\n".join(head) + b"\r\n\r\n"
        extra = draw(st.sampled_from([b"", wire_body])) + extra if wire_body else extra
        body = b""
    elif framing == "close":  # everything until the close is the body
        wire = b"\r\n".join(head) + b"\r\n\r\n" + wire_body + extra
        body, extra = body + extra, b""
    else:
        wire = b"\r\n".join(head) + b"\r\n\r\n" + wire_body
    rarely = st.integers(0, 3).map(lambda n: n == 0)
    close_after = (framing == "close" and not bodyless) or draw(rarely)
    # At least a byte: a reused connection closed before any is a stale one, sent again.
    cut_short = draw(st.integers(1, len(wire) - 1)) if draw(rarely) else None
    clean = (not bodyless and framing != "close" and not close_header and not extra
             and not close_after and cut_short is None)
    return Exchange(method, code, body, wire, extra, close_after, cut_short, clean,
                    draw(st.lists(st.integers(0, 10_000), max_size=5)), draw(st.booleans()),
                    draw(st.booleans()), draw(st.booleans()))


class PoolProperty(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(exchanges(), min_size=1, max_size=5))
    def test_no_stray_byte_reaches_another_exchange(self, script: list[Exchange]) -> None:
        endpoints = MemoryEndpoints()
        connections = endpoints.endpoint.connections
        client = OriginClient(Clock(), endpoints)
        previous: Exchange | None = None
        unreported: list[Any] = []  # closed by the client, not yet told (a turn later)
        for step, exchange in enumerate(script):
            before = len(connections)
            sent = [transport.value() for _protocol, transport in connections]
            outcomes: list[Any] = []
            path = b"/step%d" % step
            client.request(exchange.method, b"http://origin:80" + path).addBoth(
                outcomes.append)
            protocol, transport = connections[-1]
            if len(connections) == before:  # the request went out on a pooled connection
                assert previous is not None
                self.assertTrue(previous.clean, "reused after a faulty or unfinished answer")
                self.assertFalse(transport.disconnecting)
                self.assertEqual(transport.value()[len(sent[-1]):].split(b" ")[1], path)
            elif previous is not None:
                self.assertFalse(previous.clean, "a clean connection was not reused")
            for closed in unreported:  # the reactor's turn comes
                closed.connectionLost(Failure(ConnectionDone()))
            unreported = []
            origin_closed = self.run_origin(protocol, transport, exchange, outcomes)
            if transport.disconnecting and not origin_closed:
                if exchange.lost_later:
                    unreported.append(protocol)
                else:
                    protocol.connectionLost(Failure(ConnectionDone()))
            previous = exchange

    def run_origin(self, protocol: Any, transport: Any, exchange: Exchange,
                   outcomes: list[Any]) -> bool:
        """The origin writes the answer (and its extras) in pieces, and maybe closes (True);
        the answer must be this exchange's own, whole, or (cut short) a failure or a prefix
        of its own body."""
        reader = Reader()
        wire = exchange.wire + exchange.extra
        if exchange.cut_short is not None:
            wire = exchange.wire[:exchange.cut_short]
        paused = False

        def give_body() -> None:
            nonlocal paused
            if outcomes and not isinstance(outcomes[0], Failure) and reader.transport is None:
                outcomes[0].deliverBody(reader)
                if exchange.pause and reader.transport is not None:
                    reader.transport.pauseProducing()
                    paused = True

        for piece in pieces(wire, [*exchange.cuts, len(exchange.wire)]):
            if not transport.disconnecting:
                protocol.dataReceived(piece)
            if not exchange.late_reader:
                give_body()
        give_body()
        if paused:
            reader.transport.resumeProducing()
        origin_closed = exchange.close_after or exchange.cut_short is not None
        if origin_closed:
            protocol.connectionLost(Failure(ConnectionDone()))
        [outcome] = outcomes
        if exchange.cut_short is not None:  # whatever came, it is this exchange's
            if not isinstance(outcome, Failure):
                self.assertEqual(outcome.code, exchange.code)
                self.assertTrue(exchange.body.startswith(reader.body))
            return origin_closed
        self.assertNotIsInstance(outcome, Failure)
        self.assertEqual(outcome.code, exchange.code)
        self.assertEqual(outcome.headers.getRawHeaders(b"x-exchange"), [b"yes"])
        self.assertIsNone(outcome.headers.getRawHeaders(b"x-injected-by"))
        self.assertEqual(reader.body, exchange.body)
        assert reader.reason is not None
        reader.reason.trap(ResponseDone, PotentialDataLoss)
        return origin_closed
