"""The outbound HTTP client: vet the target, connect to the vetted address, one attempt.

Every request resolves and judges its host again (ssrf.Vetter), then connects to exactly
that address through an endpoint factory made for the request; the URL, and so the ``Host``
header and the TLS server name, stay the original ones. Redirects are never followed (a
plain Agent does not), and each attempt has one overall timeout covering resolution,
connection, headers and body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS, platformTrust
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from typing_extensions import override
from zope.interface import Interface, implementer

from fanout_tx._reactor import IConnectingReactor
from fanout_tx._transport import stream_transport
from fanout_tx._twisted import TrustRoot
from fanout_tx.ops.logs import url_for_log
from fanout_tx.outbound.body import BytesProducer
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.webhooks.ssrf import (
    IPAddress,
    RefusedTargetError,
    UrlError,
    Vetter,
    parse_url,
)

MAX_RESPONSE_BODY = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: an HTTP status, or None and the reason there was no answer."""

    status: int | None
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class IWebhookClient(Interface):
    def request(method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
                ) -> Deferred[Outcome]:
        """Deferred[Outcome]; never fails: errors and timeouts become an Outcome."""


class ExtraCATrust(TrustRoot):
    """Platform trust plus the PEM file of ``[webhooks] ca_file``. Twisted's public helpers
    trust either the platform or given certificates, not both; its trust-root interface
    (documented, though it lives in a private module) allows the union."""

    def __init__(self, ca_file: str) -> None:
        self._ca_file = ca_file

    @override
    def add_to(self, context: Any) -> None:
        context.set_default_verify_paths()
        context.load_verify_locations(self._ca_file)


def trust_root(ca_file: str) -> Any:
    return ExtraCATrust(ca_file) if ca_file else platformTrust()


@implementer(IAgentEndpointFactory)
class _VettedEndpoint:
    """Connects to one vetted address whatever the URI's host says; TLS checks the host."""

    def __init__(self, reactor: IConnectingReactor, host: str, address: IPAddress, trust: Any,
                 timeout: float) -> None:
        self._reactor = reactor
        self._host = host
        self._address = address
        self._trust = trust
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - IAgentEndpointFactory
        kind = TCP6ClientEndpoint if self._address.version == 6 else TCP4ClientEndpoint
        endpoint = kind(self._reactor, str(self._address), uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(optionsForClientTLS(self._host, trustRoot=self._trust), endpoint)
        return endpoint


class _LimitedBody(Protocol):
    """Collects at most ``limit`` bytes of a response body, then drops the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] = Deferred(lambda _d: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            stream_transport(self).stopProducing()

    @override
    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data[: self._limit - self._size])
        self._size += len(data)
        if self._size >= self._limit:
            self._stop()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.finished.called:
            self.finished.callback(b"".join(self._parts))


def describe_failure(failure: Failure) -> str:
    """A one-line reason for a failed attempt, for logs and dead letters."""
    if failure.check(ResponseFailed) and failure.value.reasons:
        return describe_failure(failure.value.reasons[0])
    return failure.getErrorMessage() or type(failure.value).__name__


@implementer(IWebhookClient)
class WebhookClient:
    """One attempt per ``request``, through a shared persistent connection pool."""

    _log = Logger()

    def __init__(self, reactor: IConnectingReactor, vetter: Vetter, pool: OriginClient,
                 timeout: float,
                 trust: Any) -> None:
        self._reactor = reactor
        self._vetter = vetter
        self._pool = pool
        self._timeout = timeout
        self._trust = trust

    async def _request(self, method: str, url: str, headers: Sequence[tuple[str, str]],
                       body: bytes) -> Outcome:
        target = parse_url(url)
        addresses = await self._vetter.vet(target)
        # The attempt's own timeout is the one that fires; the connect timeout is a backstop.
        endpoints = _VettedEndpoint(
            self._reactor, target.host, addresses[0], self._trust, self._timeout + 1
        )
        raw = Headers()
        for name, value in headers:
            raw.addRawHeader(name, value)
        producer = BytesProducer(body) if body or method not in ("GET", "HEAD") else None
        response = await self._pool.request(method.encode("ascii"), url.encode("ascii"), raw,
                                            producer, endpoints=endpoints)
        collector = _LimitedBody(MAX_RESPONSE_BODY)
        response.deliverBody(collector)
        response_body = await collector.finished
        retry_after = response.headers.getRawHeaders(b"retry-after", [None])[0]
        return Outcome(
            response.code, response_body,
            retry_after.decode("latin-1") if retry_after is not None else None,
        )

    def request(self, method: str, url: str, headers: Sequence[tuple[str, str]],
                body: bytes) -> Deferred[Outcome]:
        d = Deferred.fromCoroutine(self._request(method, url, headers, body))
        # Whatever error the cancelled connection or request reports, the reason is the timeout.
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=lambda _result, _t: Failure(
            TimeoutError(f"timed out after {self._timeout:g}s")))

        def failed(failure: Failure) -> Outcome:
            if not failure.check(RefusedTargetError, UrlError, TimeoutError):
                self._log.debug("attempt to {url} failed: {f}", url=url_for_log(url, path=False),
                                f=failure.value)
            return Outcome(None, error=describe_failure(failure))

        return d.addErrback(failed)
