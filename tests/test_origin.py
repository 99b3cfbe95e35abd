"""The per-request savings on the way to the origin: cached endpoints, the Grip-Sig cache,
and the access log that is only built at debug level."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from fanout_tx.config.routes import RouteTable, parse_routes
from fanout_tx.core.router import Router
from fanout_tx.grip.signature import grip_sig, verify_hs256
from fanout_tx.outbound.origin import (
    GRIP_FEATURES,
    OriginEndpoints,
    ProxySettings,
    origin_headers,
)
from fanout_tx.transports.http.proxy import ProxyFactory, ProxyResource

try:
    from twisted.internet.testing import EventLoggingObserver, MemoryReactor, StringTransport
except ImportError:  # pragma: no cover
    from twisted.test.proto_helpers import (  # type: ignore[no-redef]
        EventLoggingObserver,
        MemoryReactor,
        StringTransport,
    )


def endpoint_for(endpoints: OriginEndpoints, url: bytes) -> object:
    return endpoints.endpointForURI(URI.fromBytes(url))


class OriginEndpointsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.endpoints = OriginEndpoints(self.reactor, BrowserLikePolicyForHTTPS())

    def test_one_endpoint_per_origin(self) -> None:
        first = endpoint_for(self.endpoints, b"http://origin.test:8080/a")
        self.assertIs(endpoint_for(self.endpoints, b"http://origin.test:8080/b?q"), first)
        self.assertIsNot(endpoint_for(self.endpoints, b"http://origin.test:8081/a"), first)
        self.assertIsInstance(first, HostnameEndpoint)

    def test_ip_literal_http_needs_no_resolver(self) -> None:
        four = endpoint_for(self.endpoints, b"http://127.0.0.1:28100/")
        six = endpoint_for(self.endpoints, b"http://[::1]:28100/")
        self.assertIsInstance(four, TCP4ClientEndpoint)
        self.assertIsInstance(six, TCP6ClientEndpoint)
        four.connect(object())  # type: ignore[attr-defined]
        host, port, _factory, timeout, _bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 28100, 30.0))

    def test_https_is_wrapped_in_tls(self) -> None:
        endpoint = endpoint_for(self.endpoints, b"https://127.0.0.1:8443/")
        self.assertNotIsInstance(endpoint, (TCP4ClientEndpoint, HostnameEndpoint))

    def test_cache_is_bounded(self) -> None:
        self.patch(OriginEndpoints, "MAX_CACHED", 3)
        for port in range(10):
            endpoint_for(self.endpoints, b"http://127.0.0.1:%d/" % (8000 + port))
        self.assertLessEqual(len(self.endpoints._cache), 3)


class OriginHeadersTests(SynchronousTestCase):
    def test_same_headers_as_add_raw_header(self) -> None:
        """The origin's headers are built without ``addRawHeader``, to the same result:
        names in canonical case and grouped, a line break in a value (a ``Grip-Last`` from
        an origin's instruction, a route header) made a space, never a header of its own."""
        route = parse_routes("*,header=x-route-thing:1 127.0.0.1:80").routes[0]
        request = DummyRequest([b""])
        for name, value in ((b"x-custom", b"a"), (b"ACCEPT", b"*/*"), (b"X-Custom", b"b")):
            request.requestHeaders.addRawHeader(name, value)
        extra = [("grip-last", "ch; last-id=1\r\nX-Evil: 1"), ("Grip-Last", "b\nc\r")]
        headers = origin_headers(request, route, route.targets[0], ProxySettings(), 0.0, extra)
        expected = Headers()
        for name, value in [("x-custom", "a"), ("ACCEPT", "*/*"), ("X-Custom", "b"),
                            ("x-route-thing", "1"), ("Host", "127.0.0.1:80"),
                            ("Grip-Feature", GRIP_FEATURES), *extra]:
            expected.addRawHeader(name.encode(), value.encode())
        self.assertEqual(list(headers.getAllRawHeaders()), list(expected.getAllRawHeaders()))
        self.assertEqual(headers.getRawHeaders(b"grip-last"),
                         [b"ch; last-id=1 X-Evil: 1", b"b c"])
        self.assertFalse(headers.hasHeader(b"x-evil"))


class GripSigTests(SynchronousTestCase):
    def sig(self, now: float) -> str:
        route = parse_routes("* 127.0.0.1:80").routes[0]
        request = DummyRequest([b""])
        settings = ProxySettings(sig_key=b"secret")
        headers = origin_headers(request, route, route.targets[0], settings, now)
        [value] = headers.getRawHeaders(b"grip-sig")
        return value.decode("ascii")

    def test_same_second_same_token_as_before(self) -> None:
        self.assertEqual(self.sig(1000.2), self.sig(1000.9))
        self.assertEqual(self.sig(1000.2), grip_sig("pushpin", b"secret", 1000.2))
        later = self.sig(1001.0)
        self.assertNotEqual(later, self.sig(1000.2))
        self.assertEqual(verify_hs256(later, b"secret", 1001.0, iss="pushpin")["exp"], 4601)


def answer_in_memory(request: bytes, access_log: bool = True) -> bytes:
    """The client port's answer to ``request`` (routes only for other.test: a 502)."""
    routes = RoutesStub(parse_routes("other.test 127.0.0.1:80"))
    resource = ProxyResource(routes, Router(Clock()), Clock(), None)  # type: ignore[arg-type]
    channel = ProxyFactory(resource, Clock(), access_log=access_log).buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(request)
    return transport.value()


class AccessLogTests(SynchronousTestCase):
    def site_log(self, access_log: bool) -> list[dict[str, object]]:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        answer_in_memory(b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n", access_log)
        return [e for e in observer if e.get("log_level") == LogLevel.debug]

    def test_only_built_when_asked(self) -> None:
        self.assertEqual(self.site_log(False), [])
        [event] = self.site_log(True)
        self.assertEqual((event["path"], event["code"]), ("/x", 502))


class ProcessTests(SynchronousTestCase):
    def test_no_server_or_date_header(self) -> None:
        """The proxy's own answers carry neither ``Server`` nor ``Date``: a proxy relays the
        origin's own, and formatting a date per request that is then removed cost 4 % of a
        proxied request."""
        answer = answer_in_memory(b"GET /x?y=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 502 "))
        self.assertNotIn(b"\r\nserver:", head.lower())
        self.assertNotIn(b"\r\ndate:", head.lower())
        self.assertEqual(body, b"No route for host: example.test\n")


class RoutesStub:
    def __init__(self, table: RouteTable) -> None:
        self.table = table
