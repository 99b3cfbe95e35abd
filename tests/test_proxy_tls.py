"""https targets: verified with service-identity, or not at all with ``insecure``."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from twisted.internet import ssl
from twisted.trial.unittest import TestCase

from tests.helpers import self_signed_pem
from tests.proxy_fixtures import ProxyHarness


def self_signed_for_loopback() -> tuple[ssl.PrivateCertificate, ssl.Certificate]:
    """A certificate for IP 127.0.0.1, its own issuer: (with its key, alone)."""
    key_pem, cert_pem = self_signed_pem(
        "fanout test origin", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return ssl.PrivateCertificate.loadPEM(cert_pem + key_pem), ssl.Certificate.loadPEM(cert_pem)


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
