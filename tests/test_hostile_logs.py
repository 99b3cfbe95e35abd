"""Secrets never reach the logs (issue 13 item 8): a query string (``?access_token=``), a
bearer token, a cookie or a ``Grip-Sig`` in a proxied request appear in no log event,
whatever goes wrong with the request. Events are captured with twisted.logger and every
field of each is searched, not only the formatted text."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ClientCreator
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from fanout_tx.ops.logs import url_for_log
from fanout_tx.outbound.origin import ProxySettings
from tests.support.helpers import RawClient
from tests.support.proxy_fixtures import ProxyHarness, grip
from tests.support.services import free_port

SECRETS = (b"qs-s3cret", b"bearer-s3cret", b"cookie-s3cret")
QUERY = b"?access_token=qs-s3cret&x=1"
HEADERS = Headers({b"Authorization": [b"Bearer bearer-s3cret"],
                   b"Cookie": [b"session=cookie-s3cret"]})


def harness(test: TestCase, **kwargs: Any) -> ProxyHarness:
    """A proxy whose test origin keeps no access log (its log is the origin's, not ours)."""
    proxy = ProxyHarness(test, **kwargs)
    proxy.origin_factory.wrappedFactory.log = lambda _request: None
    return proxy


class ProxyLogTests(TestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def assert_no_secret_logged(self, expect: str) -> None:
        """Some event mentions ``expect`` (the path is still logged); none holds a secret,
        in its text or in any of its fields."""
        texts = [formatEvent(e) + repr(sorted(e.items(), key=lambda kv: kv[0]))
                 for e in self.events]
        for secret in SECRETS:
            for text in texts:
                self.assertNotIn(secret.decode(), text)
        self.assertTrue(any(expect in formatEvent(e) for e in self.events),
                        [formatEvent(e) for e in self.events])

    async def test_failed_origin_request(self) -> None:
        """Failover and the final 502 are logged with the path, not the query."""
        proxy = harness(self, extra_targets=f"127.0.0.1:{free_port()} ")
        proxy.handle(b"/api", lambda r: grip(r, Grip_Hold="bogus", Grip_Channel="a"))
        response, _body = await proxy.fetch(b"/api" + QUERY, headers=HEADERS)
        self.assertEqual(response.code, 502)
        self.assert_no_secret_logged("/api failed")
        self.assert_no_secret_logged("unreachable")

    async def test_body_too_large(self) -> None:
        proxy = harness(self, settings=ProxySettings(max_request_body=10))
        response, _body = await proxy.fetch(b"/up" + QUERY, method=b"POST", headers=HEADERS,
                                            body=FileBodyProducer(BytesIO(b"x" * 100)))
        self.assertEqual(response.code, 413)
        self.assert_no_secret_logged("413 for /up")

    async def test_absolute_form_target(self) -> None:
        """A request target that is a whole URL: neither its user info nor its query."""
        proxy = harness(self)
        client = await ClientCreator(reactor, RawClient).connectTCP(
            "127.0.0.1", proxy.proxy_port.getHost().port)
        client.transport.write(b"GET http://u:qs-s3cret@h.test/p" + QUERY + b" HTTP/1.1\r\n"
                               b"Host: x\r\nConnection: close\r\n\r\n")
        self.assertTrue((await client.closed).startswith(b"HTTP/1.1 400 "))
        self.assert_no_secret_logged("http://h.test/p")

    async def test_access_log_at_debug(self) -> None:
        """Even the debug-level access line shows the path only."""
        proxy = harness(self)
        proxy.handle(b"/ok", lambda r: b"fine")
        response, _body = await proxy.fetch(b"/ok" + QUERY, headers=HEADERS)
        self.assertEqual(response.code, 200)
        self.assert_no_secret_logged("/ok -> 200")


class UrlForLogTests(SynchronousTestCase):
    def test_forms(self) -> None:
        cases: list[tuple[Any, bool, str]] = [
            (b"/p?access_token=t", True, "/p"),
            ("https://user:pw@hooks.test:8443/services/T0/B0/XX?k=v#f", True,
             "https://hooks.test:8443/services/T0/B0/XX"),
            ("https://user:pw@hooks.test:8443/services/T0/B0/XX?k=v", False,
             "https://hooks.test:8443"),
            ("http://[::1]:80?q", True, "http://[::1]:80"),
        ]
        for url, path, expected in cases:
            self.assertEqual(url_for_log(url, path=path), expected)
