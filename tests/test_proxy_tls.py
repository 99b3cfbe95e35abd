"""https targets: verified with service-identity, or not at all with ``insecure``."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.trial.unittest import TestCase

from tests.proxy_fixtures import ProxyHarness


def self_signed_for_loopback() -> tuple[ssl.PrivateCertificate, ssl.Certificate]:
    """A certificate for IP 127.0.0.1, its own issuer: (with its key, alone)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fanout test origin")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    pem = cert_pem + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return ssl.PrivateCertificate.loadPEM(pem), ssl.Certificate.loadPEM(cert_pem)


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
