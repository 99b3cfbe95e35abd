"""Properties of outbound/origin_client.py's response parser over in-memory transports: any valid
answer parses the same whatever pieces it arrives in, and arbitrary bytes never escape as
anything but a failed request."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from fanout_tx.outbound.origin_client import BadResponseError, OriginClient
from fanout_tx.outbound.response_parser import MAX_HEAD
from tests.support.origin_client import MemoryEndpoint, MemoryEndpoints, Reader, pieces

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12)
NAME = TOKEN.filter(lambda n: n.lower() not in {
    "connection", "content-length", "keep-alive", "proxy-connection", "te", "trailers",
    "transfer-encoding", "upgrade"})
VALUE = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20)


@st.composite
def answers(draw: Any) -> tuple[bytes, dict[str, Any]]:
    """A valid answer on the wire and what it should parse into."""
    code = draw(st.integers(200, 599).filter(lambda c: c not in (204, 304)))
    phrase = draw(st.text("abcdefghij ", max_size=12)).strip()
    headers = draw(st.lists(st.tuples(NAME, VALUE), max_size=5))
    body = draw(st.binary(max_size=600))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    head = [f"HTTP/1.1 {code} {phrase}".encode()]
    head += [f"{name}: {value}".encode() for name, value in headers]
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        wire_body = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body))), max_size=4)))
        pieces, start = [], 0
        for cut in [*cuts, len(body)]:
            if start < cut <= len(body):
                pieces.append(body[start:cut])
                start = cut
        wire_body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        wire_body = body
    wire = b"\r\n".join(head) + b"\r\n\r\n" + wire_body
    return wire, {"code": code, "phrase": phrase.encode(), "headers": headers, "body": body,
                  "framing": framing}


class ParserProperties(SynchronousTestCase):
    def client(self) -> tuple[OriginClient, MemoryEndpoint]:
        endpoints = MemoryEndpoints()
        return OriginClient(Clock(), endpoints), endpoints.endpoint

    @given(answers(), st.lists(st.integers(0, 10_000), max_size=8))
    def test_any_split_parses_the_same(self, answer: tuple[bytes, dict[str, Any]],
                                       cuts: list[int]) -> None:
        wire, expected = answer
        client, endpoint = self.client()
        responses: list[Any] = []
        client.request(b"GET", b"http://origin:80/x").addCallback(responses.append)
        protocol, _transport = endpoint.connections[0]
        reader = Reader()
        for piece in pieces(wire, cuts):
            protocol.dataReceived(piece)
            if responses and reader.transport is None:
                responses[0].deliverBody(reader)
        if expected["framing"] == "close":
            protocol.connectionLost(Failure(ConnectionDone()))
        [response] = responses
        self.assertEqual((response.code, response.phrase), (expected["code"], expected["phrase"]))
        for name, _value in expected["headers"]:
            self.assertEqual(
                response.headers.getRawHeaders(name.encode()),
                [v.encode() for n, v in expected["headers"] if n.lower() == name.lower()])
        self.assertEqual(reader.body, expected["body"])
        if expected["framing"] == "close":
            reader.reason.trap(PotentialDataLoss)
        else:
            reader.reason.trap(ResponseDone)
            client.request(b"GET", b"http://origin:80/again")
            self.assertEqual(len(endpoint.connections), 1)  # reused

    def test_bad_header_name_and_status_code(self) -> None:
        """A header name that is not a token, or a status below 100, fails the request
        (a 502 for the client) instead of raising out of the protocol."""
        for wire in (b"HTTP/1.1 200 OK\r\nX\x01: y\r\nContent-Length: 0\r\n\r\n",
                     b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"):
            client, endpoint = self.client()
            outcomes: list[Any] = []
            client.request(b"GET", b"http://origin:80/x").addBoth(outcomes.append)
            protocol, _transport = endpoint.connections[0]
            protocol.dataReceived(wire)
            [outcome] = outcomes
            self.assertIsInstance(outcome, Failure, wire)
            outcome.trap(BadResponseError)

    def test_size_caps(self) -> None:
        """llhttp has no size limit and httptools keeps a header or trailer whole: a head, a
        chunk line or a trailer section over MAX_HEAD fails the request, in whatever pieces
        it comes."""
        big = b"v" * (MAX_HEAD + 5000)  # counted from the read after the last callback
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
        for wire in (b"HTTP/1.1 200 OK\r\nX-Big: " + big,
                     chunked + b"0;ext=" + big,
                     chunked + b"0\r\nX-Trailer: " + big):
            client, endpoint = self.client()
            outcomes: list[Any] = []
            client.request(b"GET", b"http://origin:80/x").addBoth(outcomes.append)
            protocol, transport = endpoint.connections[0]
            reader = Reader()
            for piece in pieces(wire, list(range(0, len(wire), 1000))):
                protocol.dataReceived(piece)
                if outcomes and reader.transport is None and not isinstance(outcomes[0], Failure):
                    outcomes[0].deliverBody(reader)
            self.assertTrue(transport.disconnecting, wire[:60])
            if isinstance(outcomes[0], Failure):
                outcomes[0].trap(BadResponseError)
            else:
                self.assertEqual(reader.body, b"ok")
                reader.reason.trap(ResponseFailed)

    @given(st.binary(max_size=300), st.lists(st.integers(0, 1000), max_size=6),
           st.booleans())
    def test_arbitrary_bytes_never_escape(self, data: bytes, cuts: list[int],
                                          head_first: bool) -> None:
        """Whatever the origin sends, the request ends as an answer or a failure the proxy
        handles (a 502); nothing raises out of the protocol."""
        client, endpoint = self.client()
        outcomes: list[Any] = []
        client.request(b"GET", b"http://origin:80/x").addBoth(outcomes.append)
        protocol, _transport = endpoint.connections[0]
        if head_first:
            data = b"HTTP/1.1 200 OK\r\n" + data
        reader = Reader()
        for piece in pieces(data, cuts):
            protocol.dataReceived(piece)
            if outcomes and not isinstance(outcomes[0], Failure) and reader.transport is None:
                outcomes[0].deliverBody(reader)
        protocol.connectionLost(Failure(ConnectionDone()))
        [outcome] = outcomes
        if isinstance(outcome, Failure):
            outcome.trap(BadResponseError, ResponseNeverReceived)
        elif reader.reason is not None:
            reader.reason.trap(ResponseDone, PotentialDataLoss, ResponseFailed)
