"""transports/http/proxy.py pass-through: a real client -> proxy -> a real origin, on loopback
sockets."""

from __future__ import annotations

import hashlib
import os
import socket
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ClientCreator, Protocol, ServerFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.grip.signature import verify_hs256
from fanout_tx.outbound.origin import ProxySettings
from tests.support.helpers import RawClient, wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness, grip, later
from tests.support.services import free_port


@implementer(IBodyProducer)
class ChunkedBody:
    """A request body of unknown length, so the client sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        for part in self.parts:
            consumer.write(part)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        """Everything is written at once."""

    def stopProducing(self) -> None:  # noqa: N802
        """Nothing left to stop."""


def hello(request: Request) -> bytes:
    request.responseHeaders.addRawHeader("Set-Cookie", "a=1")
    request.responseHeaders.addRawHeader("Set-Cookie", "b=2")
    request.responseHeaders.addRawHeader("Grip-Secret", "x")
    request.responseHeaders.addRawHeader("Content-Type", "text/x-hello")
    request.setResponseCode(203, b"Fine Thanks")
    return b"hello\n"


async def slow_stream(proxy: ProxyHarness) -> tuple[list[Request], Collect]:
    """A client reading ``/slow``, whose origin has written ``first`` and holds the rest:
    (the held origin request, the client's body reader)."""
    held: list[Request] = []

    def slow(request: Request) -> int:
        request.write(b"first\n")
        held.append(request)
        return NOT_DONE_YET

    proxy.handle(b"/slow", slow)
    response = await proxy.request(b"/slow")
    collect = Collect()
    response.deliverBody(collect)
    await wait_until(lambda: b"".join(collect.chunks) == b"first\n")
    return held, collect


class PassThroughTests(TestCase):
    async def test_plain_response_relayed(self) -> None:
        """Status, reason, repeated headers and body reach the client; Grip-* do not."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/hello", hello)
        response, body = await proxy.fetch(b"/hello?x=1&y=2")
        self.assertEqual((response.code, response.phrase), (203, b"Fine Thanks"))
        self.assertEqual(body, b"hello\n")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/x-hello"])
        self.assertEqual(response.length, 6)  # a Content-Length, not chunked
        self.assertIsNone(response.headers.getRawHeaders(b"grip-secret"))
        self.assertEqual(proxy.origin.requests[0].uri, b"/hello?x=1&y=2")

    async def test_head_and_not_modified(self) -> None:
        """HEAD keeps the origin's status and headers without a body; 304 passes as is."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/hello", hello)

        def not_modified(request: Request) -> bytes:
            request.setResponseCode(304)
            request.setHeader("ETag", '"v1"')
            return b""

        proxy.handle(b"/etag", not_modified)
        response, body = await proxy.fetch(b"/hello", method=b"HEAD")
        self.assertEqual((response.code, body), (203, b""))
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
        response, body = await proxy.fetch(b"/etag")
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"v1"'])

    async def test_request_headers(self) -> None:
        """Host kept, client Grip-* and hop-by-hop headers dropped, repeats kept,
        Grip-Feature added."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/h", lambda r: b"ok")
        headers = Headers({"Host": ["example.com:8080"], "Grip-Sig": ["forged"],
                           "Grip-Last": ["c; last-id=x"], "Connection": ["X-Hop"],
                           "X-Hop": ["1"], "X-Multi": ["1", "2"], "Keep-Alive": ["300"]})
        await proxy.fetch(b"/h", headers=headers)
        origin = proxy.origin
        self.assertEqual(origin.header(0, "host"), ["example.com:8080"])
        for name in ("grip-sig", "grip-last", "x-hop", "keep-alive"):
            self.assertIsNone(origin.header(0, name), name)
        self.assertEqual(origin.header(0, "x-multi"), ["1", "2"])
        self.assertIn("link:next", origin.header(0, "grip-feature")[0])

    async def test_large_response_and_upload_intact(self) -> None:
        """A 5 MB response and a 3 MB upload pass byte for byte."""
        big = os.urandom(5 * 1024 * 1024)
        proxy = ProxyHarness(self)
        proxy.handle(b"/big", lambda r: big)
        proxy.handle(b"/upload", lambda r: hashlib.sha256(proxy.origin.bodies[-1]).digest())
        _response, body = await proxy.fetch(b"/big")
        self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(big).digest())
        upload = os.urandom(3 * 1024 * 1024)
        _response, digest = await proxy.fetch(b"/upload", method=b"POST",
                                              body=FileBodyProducer(BytesIO(upload)))
        self.assertEqual(digest, hashlib.sha256(upload).digest())

    async def test_chunked_upload(self) -> None:
        """A chunked request body (no Content-Length) reaches the origin whole."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/up", lambda r: b"%d" % len(proxy.origin.bodies[-1]))
        _response, body = await proxy.fetch(b"/up", method=b"POST",
                                            body=ChunkedBody([b"a" * 70000, b"b" * 50000]))
        self.assertEqual(body, b"120000")
        self.assertEqual(proxy.origin.bodies[0], b"a" * 70000 + b"b" * 50000)

    async def test_chunked_origin_streams_chunk_by_chunk(self) -> None:
        """The client sees the first chunk before the origin has written the second."""
        proxy = ProxyHarness(self)
        held, collect = await slow_stream(proxy)
        later(held[0], b"second\n")
        self.assertEqual(await collect.done, b"first\nsecond\n")

    async def test_client_gone_mid_body_closes_origin_connection(self) -> None:
        """A client that leaves while a body is relayed: the origin connection is dropped
        (the origin sees it), nothing is left waiting, and the next request is served."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/h", hello)
        held, collect = await slow_stream(proxy)
        origin_gone: list[object] = []
        held[0].notifyFinish().addErrback(origin_gone.append)
        [client_side] = list(proxy.proxy_factory.protocols)
        client_side.transport.abortConnection()  # as if the client had gone
        await self.assertFailure(collect.done, Exception)
        await wait_until(lambda: bool(origin_gone))
        self.assertEqual((await proxy.fetch(b"/h"))[1], b"hello\n")

    async def test_x_forwarded_for(self) -> None:
        """``truncate:0,append`` replaces client entries with the client's address;
        ``append`` adds it."""
        proxy = ProxyHarness(self, settings=ProxySettings(x_forwarded_for=("truncate:0",
                                                                           "append")))
        proxy.handle(b"/", lambda r: b"ok")
        await proxy.fetch(b"/", headers=Headers({"X-Forwarded-For": ["6.6.6.6"]}))
        self.assertEqual(proxy.origin.header(0, "x-forwarded-for"), ["127.0.0.1"])
        proxy.resource.settings = ProxySettings(x_forwarded_for=("append",))
        await proxy.fetch(b"/", headers=Headers({"X-Forwarded-For": ["6.6.6.6"]}))
        self.assertEqual(proxy.origin.header(1, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"])
        # As Pushpin 1.36 answers with truncate:1,append: the nearest entry is kept.
        proxy.resource.settings = ProxySettings(x_forwarded_for=("truncate:1", "append"))
        await proxy.fetch(b"/", headers=Headers({"X-Forwarded-For": ["1.1.1.1, 2.2.2.2"]}))
        self.assertEqual(proxy.origin.header(2, "x-forwarded-for"), ["2.2.2.2, 127.0.0.1"])

    async def test_grip_sig_verifies_at_origin(self) -> None:
        """With a global key every origin request carries a valid Grip-Sig; a route key
        wins over it."""
        proxy = ProxyHarness(self, settings=ProxySettings(sig_iss="me", sig_key=b"secret"))
        proxy.handle(b"/", lambda r: b"ok")
        await proxy.fetch(b"/")
        token = proxy.origin.header(0, "grip-sig")[0]
        claims = verify_hs256(token, b"secret", reactor.seconds(), iss="me")
        self.assertEqual(set(claims), {"iss", "exp"})
        self.assertLess(abs(claims["exp"] - (reactor.seconds() + 3600)), 5)

        routed = ProxyHarness(self, route="*,sig_iss=route,sig_key=other")
        routed.handle(b"/", lambda r: b"ok")
        await routed.fetch(b"/")
        verify_hs256(routed.origin.header(0, "grip-sig")[0], b"other", reactor.seconds(),
                     iss="route")

    async def test_no_grip_sig_without_key(self) -> None:
        proxy = ProxyHarness(self)
        proxy.handle(b"/", lambda r: b"ok")
        await proxy.fetch(b"/")
        self.assertIsNone(proxy.origin.header(0, "grip-sig"))


class RouteOptionTests(TestCase):
    async def test_path_rewrites_and_headers(self) -> None:
        """path_beg + replace_beg, as_host and header= shape the origin request."""
        proxy = ProxyHarness(
            self, route="*,path_beg=/api/,replace_beg=/v2/,as_host=origin.test,"
                        "header=X-Route:yes")
        proxy.handle(b"/v2/items", lambda r: b"ok")
        response, body = await proxy.fetch(b"/api/items?q=1",
                                           headers=Headers({"X-Route": ["client"]}))
        self.assertEqual(body, b"ok")
        self.assertEqual(proxy.origin.requests[0].uri, b"/v2/items?q=1")
        self.assertEqual(proxy.origin.header(0, "host"), ["origin.test"])
        self.assertEqual(proxy.origin.header(0, "x-route"), ["yes"])

    async def test_path_rem_and_target_host(self) -> None:
        proxy = ProxyHarness(self, route="*,path_rem=4", target_options=",host=t.test")
        proxy.handle(b"/x", lambda r: b"ok")
        _response, body = await proxy.fetch(b"/pre/x")
        self.assertEqual(body, b"ok")
        self.assertEqual(proxy.origin.header(0, "host"), ["t.test"])

    async def test_aco_adds_cors_headers(self) -> None:
        """Route ``aco``: answers (and forwarded preflights) get the CORS headers."""
        proxy = ProxyHarness(self, route="*,aco")
        proxy.handle(b"/hello", hello)
        response, _body = await proxy.fetch(b"/hello", headers=Headers({
            "Origin": ["http://a.test"]}))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"http://a.test"])
        # The Twisted origin sends Server and Date too; Pushpin lists the same three.
        self.assertEqual(response.headers.getRawHeaders(b"access-control-expose-headers"),
                         [b"Server, Date, Set-Cookie"])
        response, _body = await proxy.fetch(b"/hello", method=b"OPTIONS", headers=Headers({
            "Origin": ["http://a.test"], "Access-Control-Request-Method": ["PUT"]}))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-methods"),
                         [b"PUT"])
        self.assertEqual(proxy.origin.requests[1].method, b"OPTIONS")

    async def test_failover_to_next_target(self) -> None:
        """A target that refuses connections is skipped for the next one."""
        proxy = ProxyHarness(self, extra_targets=f"127.0.0.1:{free_port()} ")
        proxy.handle(b"/", lambda r: b"second target")
        _response, body = await proxy.fetch(b"/")
        self.assertEqual(body, b"second target")

    async def test_test_target(self) -> None:
        """Pushpin's built-in ``test`` target: hello, a stream on channel test, 404."""
        proxy = ProxyHarness(self)
        proxy.set_routes("* test")
        response, body = await proxy.fetch(b"/")
        self.assertEqual((response.code, body), (200, b"Hello from the Pushpin test handler!\n"))
        response, body = await proxy.fetch(b"/nope")
        self.assertEqual((response.code, body), (404, b"no such test resource\n"))
        response = await proxy.request(b"/stream")
        collect = Collect()
        response.deliverBody(collect)
        await wait_until(lambda: proxy.router.has_subscribers("test"))
        proxy.publish("test", http_stream={"content": "hi\n"})
        proxy.publish("test", http_stream={"action": "close"})
        self.assertEqual(await collect.done, b"[stream opened]\nhi\n")

    async def test_websocket_seam(self) -> None:
        """Without a WebSocket handler an upgrade request gets a clear 501."""
        proxy = ProxyHarness(self)
        response, body = await proxy.fetch(b"/", headers=Headers({
            "Upgrade": ["websocket"], "Connection": ["Upgrade"]}))
        self.assertEqual(response.code, 501)
        self.assertIn(b"WebSocket", body)


class Garbage(Protocol):
    @override
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"this is not HTTP\r\n\r\n")
        self.transport.loseConnection()


class ErrorTests(TestCase):
    async def test_unreachable_origin_502(self) -> None:
        proxy = ProxyHarness(self)
        proxy.set_routes(f"* 127.0.0.1:{free_port()}")
        response, body = await proxy.fetch(b"/")
        self.assertEqual((response.code, body), (502, b"Error while proxying to origin.\n"))

    async def test_debug_route_explains_502(self) -> None:
        """With the route ``debug`` option the 502 body says why, in Pushpin's words."""
        port = free_port()
        proxy = ProxyHarness(self)
        proxy.set_routes(f"*,debug 127.0.0.1:{port}")
        _response, body = await proxy.fetch(b"/")
        self.assertEqual(body, f"Unable to connect to any targets. Tried: 127.0.0.1:{port}\n"
                         .encode())
        proxy.set_routes(f"*,debug {proxy.origin_address}")
        proxy.handle(b"/bad", lambda r: (r.setHeader("Grip-Hold", "x"), b"")[1])
        _response, body = await proxy.fetch(b"/bad")
        self.assertTrue(body.startswith(b"Failed to parse accept instructions: Grip-Hold"))

    async def test_origin_reset_before_answer_502(self) -> None:
        proxy = ProxyHarness(self)

        def reset(request: Request) -> int:
            request.channel.transport.abortConnection()
            return NOT_DONE_YET

        proxy.handle(b"/reset", reset)
        response, _body = await proxy.fetch(b"/reset")
        self.assertEqual(response.code, 502)

    async def test_garbage_origin_502(self) -> None:
        factory = ServerFactory.forProtocol(Garbage)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy = ProxyHarness(self)
        proxy.set_routes(f"* 127.0.0.1:{port.getHost().port}")
        response, _body = await proxy.fetch(b"/")
        self.assertEqual(response.code, 502)
        # Other requests are unaffected.
        proxy2 = ProxyHarness(self)
        proxy2.handle(b"/", lambda r: b"fine")
        self.assertEqual((await proxy2.fetch(b"/"))[1], b"fine")

    async def test_client_connections_skip_nagle(self) -> None:
        """A push is a small write that must not wait for the client's ACK of the last one."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/s", lambda r: grip(r, b"open\n", Grip_Hold="stream", Grip_Channel="c"))
        response = await proxy.request(b"/s")
        [wrapper] = list(proxy.proxy_factory.protocols)
        handle = wrapper.transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        collect = Collect()
        response.deliverBody(collect)
        proxy.publish("c", http_stream={"action": "close"})
        self.assertEqual(await collect.done, b"open\n")

    async def test_header_line_too_long_431(self) -> None:
        """A header line over 16 KiB gets a 431 before the connection closes."""
        proxy = ProxyHarness(self)
        client = await ClientCreator(reactor, RawClient).connectTCP(
            "127.0.0.1", proxy.proxy_port.getHost().port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
        answer = await client.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"))
        self.assertTrue(answer.endswith(b"\r\n\r\nRequest header too large.\n"))

    async def test_request_target_must_be_a_path(self) -> None:
        """Absolute-form, authority-form and a path without its ``/`` get a 400 and never
        reach an origin: pasted after the target's ``host:port``, ``0/x`` would name another
        port (``:2808`` + ``0`` = ``:28080``)."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/x", lambda r: b"ok")
        # (``OPTIONS *`` and ``GET *`` are answered by twisted.web itself: 200 and 405.)
        for method, target in ((b"GET", b"0/x"), (b"GET", b"http://127.0.0.1/x"),
                               (b"CONNECT", b"127.0.0.1:22")):
            client = await ClientCreator(reactor, RawClient).connectTCP(
                "127.0.0.1", proxy.proxy_port.getHost().port)
            client.transport.write(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n")
            answer = await client.closed
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (target, answer))
            self.assertTrue(answer.endswith(b"Request target must be a path starting with /.\n"))
        self.assertEqual(proxy.origin.requests, [])

    async def test_body_over_limit_413(self) -> None:
        proxy = ProxyHarness(self, settings=ProxySettings(max_request_body=1000))
        proxy.handle(b"/", lambda r: b"ok")
        response, _body = await proxy.fetch(b"/", method=b"POST",
                                            body=FileBodyProducer(BytesIO(b"x" * 5000)))
        self.assertEqual(response.code, 413)
        self.assertEqual(proxy.origin.requests, [])

    async def test_no_route_502(self) -> None:
        """A host no route matches gets Pushpin's 502 text."""
        proxy = ProxyHarness(self)
        proxy.set_routes("only.example 127.0.0.1:1")
        response, body = await proxy.fetch(b"/")
        self.assertEqual((response.code, body), (502, b"No route for host: 127.0.0.1\n"))
