"""Hostile publishers against held clients (issue #13, item 4): what a publisher sends in an
``http-response`` cannot frame the held client's connection. A real client is held through
the proxy; the response it gets is parsed off the wire, and the same connection is used
again to show that nothing forged follows it."""

from __future__ import annotations

import json
from typing import Any

import treq
import zmq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support.helpers import RawClient, wait_until
from tests.support.ops_fixtures import Server

FORGED = b"0\r\n\r\nHTTP/1.1 200 OK\r\nX-Forged: 1\r\nContent-Length: 6\r\n\r\nforged"


def responses(data: bytes) -> list[tuple[bytes, dict[bytes, list[bytes]], bytes]]:
    """Split what a client read into (status line, headers, body), framed by Content-Length
    as a client would; fails on anything else (chunked, or bytes that are no response)."""
    found = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"an incomplete head: {head!r}"
        status, *lines = head.split(b"\r\n")
        assert status.startswith(b"HTTP/1.1 "), f"not a response: {status!r}"
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, _colon, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        assert b"transfer-encoding" not in headers, headers
        length = int(headers[b"content-length"][0]) if b"content-length" in headers else 0
        found.append((status, headers, data[:length]))
        data = data[length:]
    return found


class _HeldClient(TestCase):
    timeout = 60

    async def held_client(self) -> tuple[Server, RawClient]:
        server = await Server(self).start()
        client = await server.raw("/lp")
        await server.held(1)
        return server, client

    async def publish(self, server: Server, fmt: dict[str, Any]) -> tuple[int, bytes]:
        body = json.dumps({"items": [{"channel": "room", "formats": {"http-response": fmt}}]})
        response = await treq.post(server.url("/publish/"), body.encode(), persistent=False)
        return response.code, await treq.content(response)

    async def again(self, server: Server, client: RawClient) -> None:
        """The same connection asks again and is held again (it was left usable)."""
        client.transport.write(b"GET /lp HTTP/1.1\r\nHost: example\r\n\r\n")
        await server.held(1)

    async def quiet(self) -> None:
        """Let anything still on its way to the client arrive."""
        await deferLater(reactor, 0.2, lambda: None)


class FramingTests(_HeldClient):
    async def test_publisher_framing_headers_dropped(self) -> None:
        """Transfer-Encoding, Content-Length, Connection (and what it lists), Upgrade,
        Keep-Alive, TE, Trailer and Proxy-* from a publisher are dropped; the body shaped like
        a chunked end and a second response stays body bytes of the one response, and the
        connection carries nothing else."""
        server, client = await self.held_client()
        code, answer = await self.publish(server, {"code": 200, "body": FORGED.decode(),
                                                   "headers": [
            ["Transfer-Encoding", "chunked"], ["Content-Length", "0"],
            ["Connection", "keep-alive, X-Listed"], ["X-Listed", "1"], ["Upgrade", "h2c"],
            ["Keep-Alive", "timeout=5"], ["TE", "trailers"], ["Trailer", "X-B"],
            ["Proxy-Authenticate", "Basic"], ["X-Ok", "yes"]]})
        self.assertEqual(code, 200, answer)
        await wait_until(lambda: client.data.endswith(FORGED))
        await self.quiet()
        [(status, headers, body)] = responses(client.data)
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", FORGED))
        self.assertEqual(headers[b"content-length"], [str(len(FORGED)).encode()])
        self.assertEqual(headers[b"x-ok"], [b"yes"])
        for name in (b"x-listed", b"upgrade", b"keep-alive", b"te", b"trailer",
                     b"proxy-authenticate", b"connection"):
            self.assertNotIn(name, headers)
        await self.again(server, client)
        await self.publish(server, {"body": "second\n"})
        await wait_until(lambda: client.data.endswith(b"second\n"))
        await self.quiet()
        self.assertEqual([r[2] for r in responses(client.data)], [FORGED, b"second\n"])

    async def test_codes_outside_200_to_599_refused(self) -> None:
        """``code: 100`` (whose body became the client's real response) and codes past 599
        are 400s naming the range; the held client is untouched and gets the next item."""
        server, client = await self.held_client()
        for bad in (100, 101, 199, 600, 999):
            code, answer = await self.publish(server, {"code": bad, "body": FORGED.decode()})
            self.assertEqual((code, answer), (400, b"item 0: Invalid format: http-response: "
                                                   b"code must be a whole number from 200 "
                                                   b"to 599\n"))
        code, answer = await self.publish(server, {"reason": "OK\r\nSet-Cookie: x=1"})
        self.assertEqual(code, 400)
        self.assertIn(b"RFC 9112 reason phrase", answer)
        await self.quiet()
        self.assertEqual(client.data, b"")
        await self.publish(server, {"code": 201, "reason": "Made", "body": "ok\n"})
        await wait_until(lambda: client.data.endswith(b"ok\n"))
        [(status, _headers, body)] = responses(client.data)
        self.assertEqual((status, body), (b"HTTP/1.1 201 Made", b"ok\n"))

    async def test_no_body_code_writes_no_body(self) -> None:
        """A 204 or 304 carries no body and no Content-Length whatever was published (a
        client trusting a length would read the next response as this one's body): the
        connection serves the next request cleanly."""
        server, client = await self.held_client()
        for no_body in (204, 304):
            await self.publish(server, {"code": no_body, "body": FORGED.decode()})
            await wait_until(lambda c=no_body: f" {c} ".encode() in client.data)
            await self.quiet()
            [(_status, headers, body)] = responses(client.data)
            self.assertEqual(body, b"")
            self.assertNotIn(b"content-length", headers)  # RFC 9110 8.6
            client.data = b""
            await self.again(server, client)
        await self.publish(server, {"body": "next\n"})
        await wait_until(lambda: client.data.endswith(b"next\n"))
        [(status, _headers, body)] = responses(client.data)
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"next\n"))

    async def test_zmq_bad_response_is_a_counted_drop(self) -> None:
        """Over ZeroMQ the same refusal is a logged drop, counted; the input reads on."""
        server, client = await self.held_client()
        context = zmq.Context()
        self.addCleanup(context.term)
        push = context.socket(zmq.PUSH)
        self.addCleanup(push.close, 0)
        push.connect(server.root.getServiceNamed("zmq-pull").endpoints[0])
        for fmt in ({"code": 100, "body": "x"}, {"body": "ok\n"}):
            push.send(b"J" + json.dumps({"channel": "room",
                                         "formats": {"http-response": fmt}}).encode())
        await wait_until(lambda: client.data.endswith(b"ok\n"))
        samples = await server.metrics()
        self.assertEqual(samples[("fanout_publish_errors_total", (("input", "zmq-pull"),))], 1)
