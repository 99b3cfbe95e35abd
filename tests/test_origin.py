"""The per-request savings on the way to the origin: cached endpoints, the Grip-Sig cache,
and the access log that is only built at debug level."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from fanout_tx.config.routes import RouteTable, parse_routes
from fanout_tx.core.router import Router
from fanout_tx.grip.signature import grip_sig, verify_hs256
from fanout_tx.outbound.origin import OriginEndpoints, ProxySettings, origin_headers
from fanout_tx.transports.http.proxy import ProxyRequest, ProxyResource, proxy_site

try:
    from twisted.internet.testing import EventLoggingObserver, MemoryReactor
except ImportError:  # pragma: no cover
    from twisted.test.proto_helpers import (  # type: ignore[no-redef]
        EventLoggingObserver,
        MemoryReactor,
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


class AccessLogTests(SynchronousTestCase):
    def site_log(self, access_log: bool) -> list[dict[str, object]]:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        routes = parse_routes("* 127.0.0.1:80")
        resource = ProxyResource(routes, Router(Clock()), Clock(), None)  # type: ignore[arg-type]
        request = DummyRequest([b"x"])
        request.uri = b"/x"
        request.code = 200
        proxy_site(resource, Clock(), access_log=access_log).log(request)
        return [e for e in observer if e.get("log_level") == LogLevel.debug]

    def test_only_built_when_asked(self) -> None:
        self.assertEqual(self.site_log(False), [])
        [event] = self.site_log(True)
        self.assertEqual(event["path"], "/x")


class ProcessTests(SynchronousTestCase):
    def test_no_twisted_server_or_date_header(self) -> None:
        """ProxyRequest.process renders as Twisted's does, minus its default headers."""
        routes = RoutesStub(parse_routes("other.test 127.0.0.1:80"))
        resource = ProxyResource(routes, Router(Clock()), Clock(), None)  # type: ignore[arg-type]
        channel = DummyChannel()
        channel.site = proxy_site(resource, Clock())
        request = ProxyRequest(channel)
        request.gotLength(0)
        request.requestHeaders.setRawHeaders(b"host", [b"example.test"])
        request.requestReceived(b"GET", b"/x?y=1", b"HTTP/1.1")
        self.assertEqual(request.code, 502)
        self.assertFalse(request.responseHeaders.hasHeader(b"server"))
        self.assertFalse(request.responseHeaders.hasHeader(b"date"))
        self.assertTrue(channel.transport.written.getvalue().endswith(
            b"No route for host: example.test\n"))


class RoutesStub:
    def __init__(self, table: RouteTable) -> None:
        self.table = table
