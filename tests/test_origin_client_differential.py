"""outbound/origin_client.py's parsing (llhttp behind outbound/response_parser.py) against h11's,
byte for byte: random and adversarial origin answers, split at random points into several
``dataReceived`` calls on a real OriginConnection (over a StringTransport), give the same
status, headers, body and message boundary as ``h11.Connection(h11.CLIENT)`` fed the same
request and the same pieces, or both refuse.

Where this client is deliberately stricter than h11, the case says so (``STRICTER``) and
only our refusal is checked; where it is deliberately more lenient, the same (``LENIENT``),
with the answer checked against what was sent. The boundary: h11's trailing data after the
answer (bytes past its end) must mean ours does not reuse the connection; ours reuses it
exactly when h11 ends the answer cleanly with nothing after it and our pool rule allows it
(not after HEAD, 204, 304, both Transfer-Encoding and Content-Length, ``Connection: close``,
a body ended by the close; an HTTP/1.0 answer only with ``Connection: keep-alive``, which
h11 never reuses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h11
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

_CONTROL = {b"connection", b"content-length", b"keep-alive", b"proxy-connection", b"te",
            b"trailers", b"transfer-encoding", b"upgrade"}

# Deliberate differences from h11, each with the reason.
STRICTER = {
    "bare-lf": "a bare LF line end: h11 takes it; a line end to some readers and not others",
    "bare-cr": "a bare CR inside a header value",
    "obs-fold": "obsolete line folding: llhttp refuses it (RFC 9112 5.2 allows a proxy 502)",
    "cl-twice": "the same Content-Length twice: llhttp refuses any duplicate",
    "cl-list": "Content-Length: N, N: llhttp refuses a list",
    "te-http10": "Transfer-Encoding in an HTTP/1.0 answer (RFC 9112 6.1: faulty framing)",
    "version": "HTTP versions other than 1.0 and 1.1",
    "status-101": "a 101 nobody asked for",
    "chunk-ext-empty": "an empty chunk extension (``5;``): llhttp refuses it",
    "chunk-size-space": "whitespace after a chunk size: llhttp refuses it",
    "reason-del": "DEL in the reason phrase",
}
LENIENT = {
    "te-empty-element": "``Transfer-Encoding: , chunked``: empty list elements are ignored "
                        "(RFC 9110 5.6.1); h11 wants exactly one 'chunked'",
    "te-bodyless": "any Transfer-Encoding on an answer that has no body (HEAD, 204, 304): "
                   "no body is read, and the connection is closed after it",
}

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=10)
NAME = TOKEN.filter(lambda n: n.lower().encode() not in _CONTROL)
VALUE = st.binary(max_size=12).map(
    lambda b: bytes(c for c in b if c == 0x20 or 0x21 <= c <= 0x7E or c >= 0x80).strip())
FORGED = b"HTTP/1.1 200 OK\r\nX-Injected-By: attacker\r\nContent-Length: 6\r\n\r\nforged"
MUTATIONS = ["none"] * 12 + [*STRICTER, *LENIENT, "cl-differ", "cl-short", "cl-long", "cl-te",
                             "te-xchunked", "te-gzip-chunked", "te-twice", "te-upper",
                             "chunk-overflow", "chunk-end-bad", "lead-crlf", "nul-in-value",
                             "space-before-colon", "status-99", "interim-blank-line"]
CHUNK_MUTATIONS = {"chunk-ext-empty", "chunk-size-space", "chunk-overflow", "chunk-end-bad"}


@dataclass
class Case:
    method: bytes
    wire: bytes
    cuts: list[int]
    mutation: str
    body: bytes  # what a lenient case must deliver


def _chunked(draw: Any, body: bytes, mutation: str) -> bytes:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body))), max_size=3))))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=False) if b > a]
    wire = b""
    for index, part in enumerate(parts):
        size = draw(st.sampled_from([b"%x", b"%X", b"00%x"])) % len(part)
        ext = draw(st.sampled_from([b"", b"", b";a=b", b';q="x y"', b";flag"]))
        if index == 0 and mutation == "chunk-ext-empty":
            ext = b";"
        if index == 0 and mutation == "chunk-size-space":
            ext = b" "
        end = b"XX" if index == 0 and mutation == "chunk-end-bad" else b"\r\n"
        wire += size + ext + b"\r\n" + part + end
    if mutation == "chunk-overflow":
        wire += b"1" + b"0" * 16 + b"\r\n" + b"x" * 8 + b"\r\n"
    trailers = draw(st.lists(st.tuples(NAME, VALUE), max_size=2))
    return wire + b"0\r\n" + b"".join(b"%s: %s\r\n" % (n.encode(), v) for n, v in trailers) \
        + b"\r\n"


@st.composite
def cases(draw: Any) -> Case:
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"HEAD"]))
    mutation = draw(st.sampled_from(MUTATIONS))
    code = draw(st.sampled_from([200, 200, 201, 204, 304, 404, 500, 599]))
    code = {"status-101": 101, "status-99": 99}.get(mutation, code)
    version = b"1.0" if mutation == "te-http10" or draw(st.integers(0, 5)) == 0 else b"1.1"
    if mutation == "version":
        version = draw(st.sampled_from([b"1.2", b"2.0", b"0.9"]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b" lead", b"caf\xe9"]))
    if mutation == "reason-del":
        reason = b"O\x7fK"
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if mutation.startswith(("te-", "chunk-")) or mutation == "cl-te":
        framing = "chunked"
    if mutation.startswith("cl-") and mutation != "cl-te":
        framing = "length"
    bodyless = method == b"HEAD" or code in (204, 304)
    if bodyless and (mutation in CHUNK_MUTATIONS or mutation == "te-http10"):
        mutation = "none"  # the body is not read at all
    if bodyless and mutation in ("te-xchunked", "te-gzip-chunked", "te-twice",
                                 "te-empty-element"):
        mutation = "te-bodyless"
    if framing == "chunked" and version == b"1.0" and not bodyless and mutation not in STRICTER:
        mutation = "te-http10"
    body = draw(st.binary(min_size=mutation in CHUNK_MUTATIONS, max_size=30))
    head = [b"HTTP/%s %d %s" % (version, code, reason) if reason or draw(st.booleans())
            else b"HTTP/%s %d" % (version, code)]
    head += [b"%s: %s%s" % (n.encode(), v, draw(st.sampled_from([b"", b"", b" ", b"\t"])))
             for n, v in draw(st.lists(st.tuples(NAME, VALUE), max_size=4))]
    connection = draw(st.sampled_from([None, None, b"close", b"keep-alive", b"Keep-Alive, close"]))
    if connection is not None:
        head.append(b"Connection: " + connection)
    if framing == "length":
        length = {"cl-short": max(0, len(body) - 2), "cl-long": len(body) + 3}.get(
            mutation, len(body))
        head.append(b"Content-Length: %d" % length)
        extra = {"cl-twice": [b"Content-Length: %d" % length],
                 "cl-differ": [b"Content-Length: %d" % (length + 1)]}.get(mutation, [])
        head += extra
        if mutation == "cl-list":
            head[-1] = b"Content-Length: %d, %d" % (length, length)
        wire_body = body
    elif framing == "chunked":
        coding = {"te-xchunked": b"xchunked", "te-gzip-chunked": b"gzip, chunked",
                  "te-upper": b"CHUNKED", "te-empty-element": b", chunked"}.get(mutation,
                                                                                b"chunked")
        head.append(b"Transfer-Encoding: " + coding)
        if mutation == "te-twice":
            head.append(b"Transfer-Encoding: chunked")
        if mutation == "cl-te":
            head.append(b"Content-Length: 100")
        wire_body = _chunked(draw, body, mutation)
    else:
        wire_body = body
    line = draw(st.integers(1, len(head)))
    if mutation == "obs-fold":
        head.insert(line, b" folded")
        head.insert(line, b"X-Fold: a")
    elif mutation == "nul-in-value":
        head.insert(line, b"X-Nul: a\x00b")
    elif mutation == "space-before-colon":
        head.insert(line, b"X-Space : a")
    elif mutation == "bare-cr":
        head.insert(line, b"X-Cr: a\rb")
    separator = [b"\r\n"] * len(head)
    if mutation == "bare-lf":
        separator[line - 1] = b"\n"
    wire = b"".join(h + s for h, s in zip(head, separator, strict=True)) + b"\r\n"
    if mutation == "lead-crlf":
        wire = b"\r\n" + wire
    interim = draw(st.integers(0, 5)) == 0 or mutation == "interim-blank-line"
    if interim:
        blank = b"\r\n" if mutation == "interim-blank-line" else b""
        wire = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + blank + wire
    wire += wire_body
    if not bodyless and framing == "close":
        after = b""  # everything until the close is the body
    else:
        after = draw(st.sampled_from([b"", b"", b"", b"\r\n", b"\n", FORGED, b"garbage"]))
    if bodyless:
        body = b""
    return Case(method, wire + after, draw(st.lists(st.integers(0, 10_000), max_size=5)),
                mutation, body)


@dataclass
class Outcome:
    refused: bool
    code: int = 0
    headers: dict[bytes, list[bytes]] = field(default_factory=dict)
    body: bytes = b""
    trailing: bool = False  # bytes came past the answer's end
    reusable: bool = False


def h11_outcome(case: Case) -> Outcome:
    """What h11 makes of the answer (and whether it would keep the connection)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=case.method, target="/", headers=[("Host", "origin")]))
    conn.send(h11.EndOfMessage())
    outcome = Outcome(refused=False)
    body = []
    ended = False

    def drain() -> bool:
        nonlocal ended
        while not ended:
            event = conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED):
                return False
            if isinstance(event, h11.Response):
                outcome.code = event.status_code
                for name, value in event.headers:
                    if name not in _CONTROL:
                        outcome.headers.setdefault(name, []).append(value)
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                ended = True
            elif isinstance(event, h11.ConnectionClosed):
                return True
        return True

    try:
        for piece in pieces(case.wire, case.cuts):
            conn.receive_data(piece)
            drain()
        if not ended:
            conn.receive_data(b"")  # the origin closes
            drain()
    except h11.RemoteProtocolError:
        return Outcome(refused=True)
    if not ended:
        return Outcome(refused=True)
    outcome.body = b"".join(body)
    outcome.trailing = bool(conn.trailing_data[0])
    outcome.reusable = (not outcome.trailing and conn.our_state is h11.DONE
                        and conn.their_state is h11.DONE)
    return outcome


def our_outcome(case: Case) -> Outcome:
    """What OriginClient makes of it, and whether its next request reuses the connection."""
    endpoints = MemoryEndpoints()
    client = OriginClient(Clock(), endpoints)
    outcomes: list[Any] = []
    client.request(case.method, b"http://origin/").addBoth(outcomes.append)
    protocol, transport = endpoints.endpoint.connections[0]
    reader = Reader()
    for piece in pieces(case.wire, case.cuts):
        if transport.disconnecting:
            break
        protocol.dataReceived(piece)
        if outcomes and not isinstance(outcomes[0], Failure) and reader.transport is None:
            outcomes[0].deliverBody(reader)
    closed = reader.reason is None or transport.disconnecting
    if closed:
        protocol.connectionLost(Failure(ConnectionDone()))
    [response] = outcomes
    if isinstance(response, Failure) or reader.reason is None:
        return Outcome(refused=True)
    if not reader.reason.check(ResponseDone, PotentialDataLoss):
        return Outcome(refused=True)
    outcome = Outcome(refused=False, code=response.code, body=reader.body)
    for name, values in response.headers.getAllRawHeaders():
        outcome.headers[name.lower()] = list(values)
    client.request(b"GET", b"http://origin/again")
    outcome.reusable = len(endpoints.endpoint.connections) == 1
    return outcome


def pool_allows(case: Case) -> bool:
    """Our pool's own rule on top of a clean boundary (documented in docs/proxy.rst)."""
    head = case.wire.partition(b"\r\n\r\n")[0]
    if head.startswith(b"HTTP/1.1 100"):  # the interim answer's: the final one follows
        head = case.wire.split(b"\r\n\r\n")[1]
    lines = head.lower().split(b"\r\n")
    tokens = {t.strip() for line in lines if line.startswith(b"connection:")
              for t in line[11:].split(b",")}
    code = int(lines[0].split(b" ")[1])
    if b"close" in tokens or case.method == b"HEAD" or code in (204, 304):
        return False
    if lines[0].startswith(b"http/1.0") and b"keep-alive" not in tokens:
        return False  # h11 never keeps an HTTP/1.0 connection; we do when it says keep-alive
    framing = {line.partition(b":")[0] for line in lines[1:]} & {
        b"content-length", b"transfer-encoding"}
    return len(framing) == 1  # both: a smuggling sign; neither: the body ends with the close


class DifferentialTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(cases())
    def test_same_as_h11(self, case: Case) -> None:
        ours = our_outcome(case)
        if case.mutation in STRICTER:
            self.assertTrue(ours.refused, STRICTER[case.mutation])
            return
        if case.mutation in LENIENT:
            self.assertFalse(ours.refused, LENIENT[case.mutation])
            self.assertEqual(ours.body, case.body)
            return
        theirs = h11_outcome(case)
        self.assertEqual(ours.refused, theirs.refused, (ours, theirs))
        if ours.refused:
            return
        self.assertEqual((ours.code, ours.headers, ours.body),
                         (theirs.code, theirs.headers, theirs.body))
        if theirs.trailing:
            self.assertFalse(ours.reusable, "reused with bytes past the answer")
        self.assertEqual(ours.reusable, not theirs.trailing and pool_allows(case),
                         (ours, theirs))
