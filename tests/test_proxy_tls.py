"""https targets: verified with service-identity, or not at all with ``insecure``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.server import Site

from fanout_tx.config.routes import parse_routes
from fanout_tx.outbound.origin import InsecurePolicy, OriginEndpoints
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.http.server_channel import HttpServerFactory
from fanout_tx.transports.ws.handler import WebSocketHandler
from fanout_tx.transports.ws.proxy import endpoint_connector
from tests.support.helpers import self_signed_for_loopback
from tests.support.proxy_fixtures import ProxyHarness
from tests.support.ws import ClientSide, WsOverHttpOrigin, WsTestMixin, grip_echo, listen_endpoint


class TlsTargetTests(TestCase):
    def setUp(self) -> None:
        self.cert, self.public = self_signed_for_loopback()

    async def test_verified_target(self) -> None:
        """An ``ssl`` target whose certificate chains to the trust root is used."""
        proxy = ProxyHarness(self, target_options=",ssl", tls_options=self.cert.options(),
                             trust_root=self.public)
        proxy.handle(b"/", lambda r: b"secure")
        response, body = await proxy.fetch(b"/")
        self.assertEqual((response.code, body), (200, b"secure"))

    async def test_untrusted_certificate_502(self) -> None:
        """An ``ssl`` target with a certificate nobody vouches for is refused."""
        proxy = ProxyHarness(self, target_options=",ssl", tls_options=self.cert.options())
        proxy.handle(b"/", lambda r: b"secure")
        response, _body = await proxy.fetch(b"/")
        self.assertEqual(response.code, 502)
        self.assertEqual(proxy.origin.requests, [])

    async def test_insecure_target_skips_verification(self) -> None:
        proxy = ProxyHarness(self, target_options=",ssl,insecure",
                             tls_options=self.cert.options())
        proxy.handle(b"/", lambda r: b"unchecked")
        response, body = await proxy.fetch(b"/")
        self.assertEqual((response.code, body), (200, b"unchecked"))


class WebSocketOverHttpTlsTests(WsTestMixin, TestCase):
    """WebSocket-over-HTTP to an https origin: ``insecure`` skips the certificate check
    there too; without it, an unverifiable origin refuses the handshake."""

    @inlineCallbacks
    def start_tls(self, target_options: str):
        cert, _public = self_signed_for_loopback()
        self.origin = WsOverHttpOrigin(grip_echo)
        port = reactor.listenSSL(0, Site(self.origin), cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        line = f"* 127.0.0.1:{port.getHost().port},over_http,ssl{target_options}"
        verified = OriginClient(reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()))
        insecure = OriginClient(reactor, OriginEndpoints(reactor, InsecurePolicy()))
        for client in (verified, insecure):  # after the sessions end (cleanups run last first)
            self.addCleanup(client.closeCachedConnections)
        yield self.start_handler(line)
        self.handler = WebSocketHandler(
            SimpleNamespace(table=parse_routes(line)), self.router, verified, reactor,
            self.proxy_settings, self.factory, endpoint_connector(reactor),
            insecure_agent=insecure)
        listening = yield listen_endpoint().listen(HttpServerFactory(self.handler, reactor))
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port

    @inlineCallbacks
    def test_insecure_origin(self) -> Any:
        yield self.start_tls(",insecure")
        side, client = yield self.connect()
        client.sendMessage(b"hello")
        messages = yield side.wait_messages(1)
        self.assertEqual(messages[0][0], b"hello")

    @inlineCallbacks
    def test_unverifiable_origin_refused(self) -> Any:
        yield self.start_tls("")
        side = ClientSide(f"ws://127.0.0.1:{self.port}/ws")
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(side)
        failure = yield self.assertFailure(side.opened, Exception)
        self.assertIn("502", str(failure))
        self.assertEqual(self.origin.requests, [])
