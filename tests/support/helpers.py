"""Fakes shared by the tests, each implementing a real interface (checked with verifyObject)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl, task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import IBus, ISubscriber
from fanout_tx.core.items import Item


@implementer(ISubscriber)
class RecordingSubscriber:
    """Records every delivery: (item, fmt, prepared) tuples in ``received``."""

    def __init__(self, formats: tuple[str, ...] = ("http-stream",),
                 meta: dict[str, str] | None = None, fail: bool = False) -> None:
        self.formats = formats
        self.meta = meta or {}
        self.fail = fail
        self.received: list[tuple[Item, Format, Any]] = []
        self.closed: list[str] = []
        self.recovered = 0

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        if self.fail:
            raise RuntimeError("subscriber failure on purpose")
        self.received.append((item, fmt, prepared))

    def close(self, reason: str) -> None:
        self.closed.append(reason)

    def recover(self) -> None:
        self.recovered += 1

    @property
    def contents(self) -> list[bytes | None]:
        return [fmt.content for _item, fmt, _prepared in self.received]


async def wait_until(condition: Callable[[], object], timeout: float = 10.0,
                     interval: float = 0.01, message: str = "condition not met") -> None:
    """Let the real reactor run until ``condition()`` is true; fail after ``timeout`` seconds
    with ``message``.

    For tests with real sockets, instead of sleeping: each check yields to the reactor.
    """

    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{message} within {timeout}s")
        await task.deferLater(reactor, interval, lambda: None)


T = TypeVar("T")


def with_deadline(waiter: Deferred[T], what: str, seconds: float = 10.0) -> Deferred[T]:
    """``waiter``, failed with ``AssertionError(what ...)`` if the real reactor has not fired
    it within ``seconds``: a wait on a real socket never hangs until the test's timeout."""

    def expired(_result: object, _timeout: float) -> T:
        raise AssertionError(f"{what}: not within {seconds}s")

    return waiter.addTimeout(seconds, reactor, onTimeoutCancel=expired)


@implementer(IBus)
class RecordingBus:
    """Records every publish as (items, input_name); fails with ``failure`` when one is set."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.published: list[tuple[list[Item], str]] = []

    def publish(self, items: Sequence[Item], input_name: str) -> Deferred[None]:
        if self.failure is not None:
            return fail(self.failure)
        self.published.append((list(items), input_name))
        return succeed(None)


class TrackingFactory(WrappingFactory):
    """Wraps a server factory so a test can wait until every server-side connection has
    closed (the client closing first is not enough: trial would see a dirty reactor)."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._idle: list[Deferred[None]] = []

    @override
    def unregisterProtocol(self, p: IProtocol) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def wait_closed(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter


class RawClient(Protocol):
    """A plain TCP client: collects what the server sends in ``data``; ``closed`` fires with
    it when the server closes. For seeing exactly what goes on the wire, and when."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.data += data

    @override
    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        self.closed.callback(self.data)


def self_signed_pem(common_name: str, san: x509.GeneralName) -> tuple[bytes, bytes]:
    """A self-signed CA certificate for ``san`` (a DNS name or an IP address), valid
    around now: (key PEM, certificate PEM). The certificate is its own trust root."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def self_signed_for_loopback() -> tuple[ssl.PrivateCertificate, ssl.Certificate]:
    """A certificate for IP 127.0.0.1, its own issuer: (with its key, alone)."""
    key_pem, cert_pem = self_signed_pem(
        "fanout test origin", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return ssl.PrivateCertificate.loadPEM(cert_pem + key_pem), ssl.Certificate.loadPEM(cert_pem)
