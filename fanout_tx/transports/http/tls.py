"""TLS on the client port(s) (``[runner] https_ports``), with certificates where and as
Pushpin's runner keeps them, so a Pushpin deployment's certificate folder works unchanged.

In ``certs_dir``: ``default_<port>.crt`` / ``.key`` (else ``default.crt`` / ``.key``) for
clients that send no server name or one without a file of its own; ``<hostname>.crt`` /
``.key`` for each name served by SNI. A ``.crt`` may carry the chain after the certificate.
Everything is loaded and checked at start-up: a missing, unreadable or mismatched file
stops it with the file named, never a failed handshake later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorSSL
from zope.interface import implementer

from fanout_tx.config.settings import ConfigError, ListenAddress

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class Identity:
    """One certificate (with its chain) and key, ready as a TLS server context."""

    certificate: x509.Certificate
    context: SSL.Context


def _identity(crt: Path, key: Path) -> Identity:
    try:
        chain = _PEM_CERTIFICATE.findall(crt.read_bytes())
        key_pem = key.read_bytes()
    except OSError as e:
        raise ConfigError(e.filename or crt, None, f"cannot read: {e.strerror}") from None
    if not chain:
        raise ConfigError(crt, None, "no PEM certificate in the file")
    try:
        certificates = [x509.load_pem_x509_certificate(pem) for pem in chain]
        private_key = serialization.load_pem_private_key(key_pem, password=None)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.use_certificate(certificates[0])
        # pyOpenSSL takes fewer key types than PEM holds: it raises TypeError (caught below)
        context.use_privatekey(private_key)  # type: ignore[arg-type]
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        context.check_privatekey()
    except (SSL.Error, ValueError, TypeError) as e:
        raise ConfigError(key, None, f"unusable certificate or key ({crt.name}): {e}") from None
    return Identity(certificates[0], context)


@implementer(IOpenSSLContextFactory)
class ServerIdentities:
    """The certificate for clients without a known server name, and one per SNI name; the
    TLS listener's context factory."""

    def __init__(self, default: Identity, by_name: dict[bytes, Identity]) -> None:
        self.default = default
        self.by_name = by_name
        if by_name:  # set up once: a context cannot change after its first connection
            default.context.set_tlsext_servername_callback(self._choose)

    def getContext(self) -> SSL.Context:  # noqa: N802 - the context factory's name
        return self.default.context

    def _choose(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        chosen = self.by_name.get(name.lower()) if name else None
        if chosen is not None:
            connection.set_context(chosen.context)


def load_identities(folder: Path, port: int) -> ServerIdentities:
    """The identities for one TLS port; ConfigError naming the file when one is missing."""
    default_name = f"default_{port}" if (folder / f"default_{port}.crt").exists() else "default"
    crt, key = folder / f"{default_name}.crt", folder / f"{default_name}.key"
    if not crt.exists() or not key.exists():
        raise ConfigError(
            folder, None,
            f"https port {port} needs default_{port}.crt and .key (or default.crt and .key) "
            "in this folder ([runner] certs_dir)")
    by_name = {}
    for other in sorted(folder.glob("*.crt")):
        name = other.stem
        if name == "default" or name.startswith("default_"):
            continue
        by_name[name.lower().encode("idna")] = _identity(other, other.with_suffix(".key"))
    return ServerIdentities(_identity(crt, key), by_name)


def tls_endpoint(reactor: IReactorSSL, address: ListenAddress, identities: ServerIdentities,
                 backlog: int) -> SSL4ServerEndpoint:
    return SSL4ServerEndpoint(reactor, address.port, identities, backlog=backlog,
                              interface=address.host)
