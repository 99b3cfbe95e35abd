"""TLS client ports (``[runner] https_ports``, fanout_tx/transports/http/tls.py): certificates laid
out as Pushpin's runner keeps them, SNI, clear start-up errors; a real TLS client through the
service tree to a real origin on loopback."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from fanout_tx.config.settings import ConfigError
from fanout_tx.tap import Options, build_service, listening_port, load_settings
from fanout_tx.transports.http.tls import load_identities
from tests.support.helpers import RawClient, TrackingFactory, self_signed_pem
from tests.support.proxy_fixtures import origin_on_loopback, tree_config


def write_identity(folder: Path, name: str, hostname: str) -> bytes:
    """A self-signed certificate for ``hostname`` as ``name``.crt/.key; returns the cert."""
    key, cert = self_signed_pem(hostname, x509.DNSName(hostname))
    (folder / f"{name}.crt").write_bytes(cert)
    (folder / f"{name}.key").write_bytes(key)
    return cert


class IdentityTests(TestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.folder.mkdir()

    def test_missing_default_names_the_files(self) -> None:
        error = self.assertRaises(ConfigError, load_identities, self.folder, 443)
        self.assertIn("default_443.crt", str(error))
        self.assertIn(str(self.folder), str(error))

    def test_port_specific_default_first(self) -> None:
        write_identity(self.folder, "default", "general.test")
        write_identity(self.folder, "default_8443", "port.test")
        write_identity(self.folder, "b.test", "b.test")
        identities = load_identities(self.folder, 8443)
        [name] = identities.default.certificate.subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
        self.assertEqual(name.value, "port.test")
        self.assertEqual(set(identities.by_name), {b"b.test"})

    def test_unusable_files(self) -> None:
        write_identity(self.folder, "default", "a.test")
        key, _cert = self_signed_pem("other", x509.DNSName("other"))
        (self.folder / "default.key").write_bytes(key)  # not this certificate's key
        error = self.assertRaises(ConfigError, load_identities, self.folder, 443)
        self.assertIn("unusable certificate or key", str(error))
        (self.folder / "default.crt").write_text("not a certificate")
        error = self.assertRaises(ConfigError, load_identities, self.folder, 443)
        self.assertIn("no PEM certificate", str(error))
        write_identity(self.folder, "default", "a.test")
        write_identity(self.folder, "b.test", "b.test")
        (self.folder / "b.test.key").unlink()
        error = self.assertRaises(ConfigError, load_identities, self.folder, 443)
        self.assertIn("cannot read", str(error))


class StartUpTests(TestCase):
    def test_missing_certificate_stops_start_up(self) -> None:
        """``twistd fanout`` with https_ports and no certificate: it exits with one line
        naming the folder and the files expected, before anything is built."""
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "fanout.conf").write_text("[runner]\nhttps_ports = 8443\n")
        (folder / "routes").write_text("* 127.0.0.1:8080\n")
        error = self.assertRaises(SystemExit, Options().parseOptions,
                                  ["--config", str(folder / "fanout.conf")])
        self.assertIn(str(folder / "runner" / "certs"), error.code)
        self.assertIn("default_8443.crt", error.code)


class TlsPortTests(TestCase):
    async def test_tls_clients_with_and_without_sni(self) -> None:
        """A TLS client gets the default certificate, or the one its SNI names; the proxy
        knows the request is secure (X-Forwarded-Proto: https, as Pushpin)."""
        origin, origin_port = origin_on_loopback(self, {
            b"/hi": lambda request: b"hello over tls"})
        folder = Path(self.mktemp())
        certs = folder / "runner" / "certs"
        certs.mkdir(parents=True)
        default_cert = write_identity(certs, "default", "localhost")
        named_cert = write_identity(certs, "b.test", "b.test")
        config = tree_config(folder, origin_port, "https_ports = 127.0.0.1:0\n",
                             "[proxy]\nset_x_forwarded_protocol = proto-only\n")
        root, core = build_service(load_settings(str(config)), reactor)
        self.addCleanup(core.clients.close_idle)  # after every user stopped
        proxy = root.getServiceNamed("http-proxy")
        listener = proxy.getServiceNamed("https 127.0.0.1:0")
        listener.factory = factory = TrackingFactory(listener.factory)
        proxy.startService()
        self.addCleanup(factory.wait_closed)
        self.addCleanup(proxy.stopService)
        port = (await listening_port(listener)).getHost().port
        for hostname, trusted in (("localhost", default_cert), ("b.test", named_cert)):
            options = optionsForClientTLS(hostname, Certificate.loadPEM(trusted))
            endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
            client = await connectProtocol(endpoint, RawClient())
            client.transport.write(b"GET /hi HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n"
                                   % hostname.encode())
            answer = await client.closed
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
            self.assertTrue(answer.endswith(b"hello over tls"))
        self.assertEqual(origin.header(0, "x-forwarded-proto"), ["https"])
        self.assertEqual(origin.header(1, "host"), ["b.test"])
