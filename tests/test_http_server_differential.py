"""The client port's request parsing (transports/http/server_channel.py) against h11's, on
random and adversarial byte streams split at random points: the same message boundaries,
methods, targets, headers and bodies, or both refuse.

Where the two may differ, on purpose (the test allows exactly these):
- ours is stricter: llhttp refuses Content-Length with Transfer-Encoding (h11 lets chunked
  win), obs-fold (h11 unfolds it), a bare CR or LF line ending, a method it does not know
  (h11 takes any token), a version other than HTTP/1.0 and 1.1 (505), and obs-text in a
  few places h11 lets through; the messages ours took before the refusal must then be the
  first of h11's, identical;
- ours is more lenient in two places: CR and LF before a request line are skipped (RFC
  9112 2.2: a server SHOULD ignore an empty line there; ``theirs`` skips them too), and an
  HTTP/1.1 request without ``Host`` is taken (routed as host "", as twisted.web did),
  where h11 refuses it.
Never allowed: a message ours takes that h11 refuses or reads differently (the smuggling
direction), or a body or boundary that differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.transports.http.server_channel import HttpServerFactory, ServerRequest

Message = tuple[bytes, bytes, tuple[tuple[bytes, tuple[bytes, ...]], ...], bytes]


def _headers(pairs: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    """Header values grouped by lower-cased name, in order (Twisted's Headers groups them)."""
    grouped: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        grouped.setdefault(name.lower(), []).append(value)
    return tuple(sorted((name, tuple(values)) for name, values in grouped.items()))


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def render(self, request: ServerRequest) -> bytes:
        pairs = [(n, v) for n, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        self.messages.append((request.method, request.uri, _headers(pairs),
                              request.content.getvalue()))
        return b"ok"


@dataclass
class Outcome:
    messages: list[Message] = field(default_factory=list)
    refused: bool = False
    reason: str = ""


def ours(chunks: list[bytes]) -> Outcome:
    recorder = _Recorder()
    channel = HttpServerFactory(recorder, Clock()).buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    for chunk in chunks:
        if transport.disconnecting:
            break
        channel.dataReceived(chunk)
    written = transport.value()
    refused = any(b"HTTP/1.1 %d " % code in written for code in (400, 431, 505))
    return Outcome(recorder.messages, refused, written[-80:].decode("latin-1"))


def theirs(chunks: list[bytes]) -> Outcome:
    """h11's reading of the same bytes (whole: its result does not depend on the split), one
    message per Connection so that CR and LF before a request line can be skipped, as
    llhttp does (RFC 9112 2.2)."""
    data = b"".join(chunks)
    outcome = Outcome()
    while data := data.lstrip(b"\r\n"):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        request: h11.Request | None = None
        body = b""
        try:
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return outcome  # not complete
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
        except h11.RemoteProtocolError as e:
            outcome.refused = True
            outcome.reason = str(e)
            return outcome
        assert request is not None
        outcome.messages.append((request.method, request.target,
                                 _headers(list(request.headers)), body))
        if conn.their_state is h11.MUST_CLOSE:
            return outcome  # nothing after it is read
        data = conn.trailing_data[0]
    return outcome


# -- the streams ---------------------------------------------------------------------------------

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]
NAMES = [b"X-Custom", b"Accept", b"Cookie", b"X-A-B", b"Grip-Sig", b"Origin"]
TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'*+^`|")
token = st.binary(min_size=1, max_size=12).map(lambda b: bytes(c for c in b if c in TOKEN) or b"x")
value = st.binary(max_size=20).map(lambda b: bytes(c for c in b if 0x20 < c < 0x7F))
target = st.lists(st.sampled_from([b"a", b"b", b"%20", b"-", b"~", b"?", b"=", b"&", b"/"]),
                  max_size=8).map(lambda parts: b"/" + b"".join(parts))


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    headers = [(b"Host", b"example.test")]
    headers += draw(st.lists(st.tuples(st.sampled_from(NAMES) | token, value), max_size=5))
    body = draw(st.binary(max_size=40)) if method in (b"POST", b"PUT", b"PATCH") else b""
    framing = draw(st.sampled_from(["length", "chunked", "none"])) if body else "none"
    wire = b""
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        wire = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        wire = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
    head = b"%b %b HTTP/1.1\r\n" % (method, draw(target))
    head += b"".join(b"%b: %b\r\n" % pair for pair in headers)
    return head + b"\r\n" + wire


FRAGMENTS = [b"\n", b"\r", b"\r\n", b" ", b"\t", b":", b"\x00", b"\x7f", b"\x80", b"\r\n ",
             b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n",
             b"Content-Length: 0\r\n", b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n",
             b"ffffffffffffffffffff\r\n", b"GET / HTTP/1.1\r\n", b"HTTP/1.0", b"a"]


@st.composite
def stream(draw: st.DrawFn, adversarial: bool) -> list[bytes]:
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=4)))
    if adversarial:
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            fragment = draw(st.sampled_from(FRAGMENTS))
            if draw(st.booleans()):
                data = data[:at] + fragment + data[at:]
            else:
                data = data[:at] + fragment + data[at + len(fragment):]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [piece for piece in pieces if piece]  # (an empty one is the end to h11)


# h11's words for what ours takes (see the module's docstring)
_NO_HOST = "Missing mandatory Host: header"

_settings = settings(max_examples=250, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


class DifferentialTests(SynchronousTestCase):
    def compare(self, chunks: list[bytes]) -> None:
        mine, reference = ours(chunks), theirs(chunks)
        context = f"{b''.join(chunks)!r}: ours {mine}, h11 {reference}"
        # Every message both took is the same, in the same place.
        common = min(len(mine.messages), len(reference.messages))
        self.assertEqual(mine.messages[:common], reference.messages[:common], context)
        if reference.reason == _NO_HOST:
            return  # where h11 stopped, ours may go on (see the module's docstring)
        # Nothing h11 refuses is taken by ours.
        self.assertLessEqual(len(mine.messages), len(reference.messages), context)
        if not mine.refused:  # (ours may refuse sooner: it is stricter)
            self.assertFalse(reference.refused, context)
            self.assertEqual(len(mine.messages), len(reference.messages), context)

    @_settings
    @given(stream(adversarial=False))
    def test_valid_streams_agree(self, chunks: list[bytes]) -> None:
        mine, reference = ours(chunks), theirs(chunks)
        self.assertFalse(mine.refused or reference.refused, (mine, reference))
        self.assertEqual(mine.messages, reference.messages)

    @_settings
    @given(stream(adversarial=True))
    def test_adversarial_streams_agree_or_both_refuse(self, chunks: list[bytes]) -> None:
        self.compare(chunks)

    def test_known_smuggling_shapes_refused(self) -> None:
        """Each refused by ours, nothing of it taken (h11 takes CL+TE and obs-fold, which
        RFC 9112 allows a server to repair rather than refuse)."""
        for data in [
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"fffffffffffffffffff1\r\n",
        ]:
            mine = ours([data])
            self.assertTrue(mine.refused, (data, mine))
            self.assertEqual(mine.messages, [])
