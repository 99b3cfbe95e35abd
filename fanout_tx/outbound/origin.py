"""Talking to the origin: the request it gets (SPEC A2 header rules) and body readers.

Pure header building plus two small IProtocol body consumers: one that collects a bounded
body (GRIP instructions), one that relays a body to the client chunk by chunk with flow
control in both directions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from twisted.web.server import Request
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._reactor import IConnectingReactor
from fanout_tx._transport import stream_transport
from fanout_tx._twisted import checked_headers
from fanout_tx.config.routes import Route, RouteTarget
from fanout_tx.config.settings import Config, ProxyConfig
from fanout_tx.core.headers import Header, end_to_end
from fanout_tx.grip.instruct import GripError
from fanout_tx.grip.signature import SignatureError, grip_sig, verify_hs256

# What this server really implements (Pushpin also lists session).
GRIP_FEATURES = (
    "status, link:next, filter:skip-self, filter:skip-users, filter:require-sub, "
    "filter:build-id, filter:var-subst"
)

_log = Logger()

DEFAULT_MAX_HOLD_BODY = 100_000  # Pushpin's limit on an instruction's body
DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class ProxySettings(ProxyConfig):
    """What the proxy uses: the ``[proxy]`` section, one ``[handler]`` value, and limits
    of its own."""

    connection_subscription_max: int = 20
    max_hold_body: int = DEFAULT_MAX_HOLD_BODY
    max_request_body: int = DEFAULT_MAX_REQUEST_BODY
    origin_timeout: float = 600.0  # seconds to the response head (zurl's default timeout)

    @classmethod
    def from_config(cls, config: Config) -> ProxySettings:
        proxy = {f.name: getattr(config.proxy, f.name) for f in fields(ProxyConfig)}
        return cls(**proxy,
                   connection_subscription_max=config.handler.connection_subscription_max)


def header_pairs(headers: Headers) -> list[Header]:
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in headers.getAllRawHeaders() for value in values
    ]


def forwarded_for(existing: list[str], client: str, rules: Sequence[str]) -> list[str]:
    """``X-Forwarded-For`` after ``x_forwarded_for`` rules (``truncate:N``, ``append``)."""
    entries = [e.strip() for v in existing for e in v.split(",") if e.strip()]
    for rule in rules:
        if rule.startswith("truncate:"):
            count = rule.partition(":")[2].strip()
            keep = int(count) if count.isdigit() else 0  # a bad number drops them all
            entries = entries[-keep:] if keep else []  # the nearest hops, as Pushpin
        elif rule == "append" and client:
            entries.append(client)
    return entries


def trusted_client(request: Request, settings: ProxySettings, now: float) -> bool:
    """Whether the client is a GRIP proxy in front of this one, as Pushpin decides it: its
    ``Grip-Sig`` verifies with ``[proxy] upstream_key`` and has not expired. Its ``Grip-*``
    headers then reach the origin, and the origin's instructions go back to it unprocessed
    for it to carry out."""
    if not settings.upstream_key:
        return False
    token = request.getHeader(b"grip-sig")
    if not token:
        return False
    try:
        verify_hs256(token.decode("latin-1"), settings.upstream_key, now, leeway=0)
    except SignatureError as error:
        _log.debug("Grip-Sig from {client} not trusted: {reason}",
                   client=request.getClientAddress(), reason=error)
        return False
    return True


def origin_url(target: RouteTarget, path_and_query: bytes) -> bytes:
    if not path_and_query.startswith(b"/"):  # never part of the authority
        path_and_query = b"/" + path_and_query
    host = f"[{target.host}]" if ":" in target.host else target.host
    scheme = "https" if target.ssl else "http"
    return f"{scheme}://{host}:{target.port}".encode("ascii") + path_and_query


def origin_headers(
    request: Request, route: Route, target: RouteTarget, settings: ProxySettings, now: float,
    extra: Sequence[Header] = (),
) -> Headers:
    """The headers the origin gets: end-to-end client headers without Grip-*, then the
    route's, the forwarding headers, ``Grip-Sig`` and ``Grip-Feature``. A trusted client's
    (``trusted_client``) Grip-* headers are kept and it signs for itself, as in Pushpin."""
    trusted = trusted_client(request, settings, now)
    incoming = header_pairs(request.requestHeaders)
    drop = {"host", "content-length", "expect", "x-forwarded-for"}
    if not settings.accept_x_forwarded_protocol:
        drop |= {"x-forwarded-proto", "x-forwarded-protocol"}
    pairs = end_to_end(incoming, drop=drop, keep_grip=trusted)
    client_host = next((v for n, v in incoming if n.lower() == "host"), "")
    host = route.as_host or target.host_header or client_host or f"{target.host}:{target.port}"
    if route.headers:
        route_names = {n.lower() for n, _v in route.headers}
        pairs = [(n, v) for n, v in pairs if n.lower() not in route_names]
        pairs.extend(route.headers)
    pairs.append(("Host", host))
    xff = forwarded_for(
        [v for n, v in incoming if n.lower() == "x-forwarded-for"],
        getattr(request.getClientAddress(), "host", ""),
        settings.x_forwarded_for_trusted if trusted else settings.x_forwarded_for,
    )
    if xff:
        pairs.append(("X-Forwarded-For", ", ".join(xff)))
    # As Pushpin 1.36 does: the protocol header is set for TLS clients only.
    if settings.set_x_forwarded_protocol != "false" and request.isSecure():
        pairs.append(("X-Forwarded-Proto", "https"))
        if settings.set_x_forwarded_protocol == "true":
            pairs.append(("X-Forwarded-Protocol", "https"))
    if not trusted:
        pairs.extend(_grip_signature(route, settings, now))
    pairs.extend(extra)
    return _as_headers(pairs)


def link_target(url: str, route: Route) -> RouteTarget | None:
    """The route target a ``Grip-Link`` URL names (same scheme, host and port), if any."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    for target in route.targets:
        if (target.kind == "http" and target.host.lower() == host and target.port == port
                and parts.scheme == ("https" if target.ssl else "http")):
            return target
    return None


def link_headers(
    request: Request, route: Route, target: RouteTarget | None, settings: ProxySettings, now: float,
    grip_last: Sequence[Header],
) -> Headers:
    """What a ``Grip-Link`` fetch carries, as in Pushpin: ``Grip-Last`` and nothing of the
    client's (no Cookie, Authorization, ...). Towards one of the route's own targets it is
    also signed and gets the route's headers and the ``Host`` the client request had there;
    a foreign host (route option ``link_any_host``) gets ``Grip-Last`` only."""
    pairs: list[Header] = []
    if target is not None:
        client_host = (request.getHeader(b"host") or b"").decode("latin-1")
        pairs.extend(route.headers)
        pairs.append(("Host", route.as_host or target.host_header or client_host
                      or f"{target.host}:{target.port}"))
        pairs.extend(_grip_signature(route, settings, now))
    pairs.extend(grip_last)
    return _as_headers(pairs)


def _grip_signature(route: Route, settings: ProxySettings, now: float) -> list[Header]:
    """What marks a request as ours towards a route's own origin: ``Grip-Sig`` (when a key is
    set) and ``Grip-Feature``."""
    pairs: list[Header] = []
    key = route.sig_key or settings.sig_key
    if key:
        pairs.append(("Grip-Sig", _grip_sig_at(route.sig_iss or settings.sig_iss, key, int(now))))
    pairs.append(("Grip-Feature", GRIP_FEATURES))
    return pairs


def _as_headers(pairs: Sequence[Header]) -> Headers:
    """What ``addRawHeader`` per pair makes (names checked and in canonical case, line breaks
    in a value made spaces) at a third of its cost."""
    lines = []
    for name, value in pairs:
        raw = value.encode("latin-1")
        if b"\r" in raw or b"\n" in raw:
            raw = b" ".join(raw.splitlines())
        lines.append((name.encode("latin-1"), raw))
    return checked_headers(lines)


@lru_cache(maxsize=64)
def _grip_sig_at(iss: str, key: bytes, second: int) -> str:
    """``grip_sig`` only depends on the whole second: one HMAC per second and key, not one
    per request."""
    return grip_sig(iss, key, second)


@implementer(IAgentEndpointFactory)
class OriginEndpoints:
    """The Agent's endpoints, made once per (scheme, host, port) instead of once per
    request (a HostnameEndpoint costs an IDNA encoding to build). An IP-literal ``http``
    origin gets a plain TCP endpoint, so a new connection needs no resolver thread."""

    MAX_CACHED = 1000

    def __init__(self, reactor: IConnectingReactor, tls_policy: IPolicyForHTTPS,
                 connect_timeout: float = 30.0) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._timeout = connect_timeout
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802 - Twisted API
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            endpoint = self._cache[key] = self._make(*key)
        return endpoint

    def _make(self, scheme: bytes, host: bytes, port: int) -> IStreamClientEndpoint:
        text = host.decode("ascii")
        if scheme == b"http":
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                pass
            else:
                plain = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
                return plain(self._reactor, text, port, timeout=self._timeout)
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        if scheme == b"https":
            return wrapClientTLS(self._tls_policy.creatorForNetloc(host, port), endpoint)
        return endpoint


class BodyCollector(Protocol):
    """Collects a body of at most ``limit`` bytes; more is a GripError (-> 502).
    Cancelling ``done`` (a deadline, the client gone) closes the origin connection: a
    connection left mid-body cannot serve anyone else."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._failed = False

    def _cancel(self, _done: Deferred[bytes]) -> None:
        self._failed = True
        self.parts = []
        if self.transport is not None:
            stream_transport(self).stopProducing()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._failed = True
            stream_transport(self).stopProducing()
            self.done.errback(GripError(f"instruction body larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._failed:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """Relays an origin body to the client as it arrives. As the client request's push
    producer, a client that stops reading pauses the origin connection."""

    def __init__(self, request: Request) -> None:
        self.request = request
        # Cancelling it stops the body and closes the origin connection.
        self.done: Deferred[None] = Deferred(lambda _d: self.stopProducing())

    @override
    def connectionMade(self) -> None:
        self.request.registerProducer(self, True)

    @override
    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.request.producer is self:
            self.request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def pauseProducing(self) -> None:
        stream_transport(self).pauseProducing()

    def resumeProducing(self) -> None:
        stream_transport(self).resumeProducing()

    def stopProducing(self) -> None:
        stream_transport(self).stopProducing()


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS to an origin without certificate checks (route target option ``insecure``)."""

    def __init__(self, hostname: bytes) -> None:
        self.hostname = hostname

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:  # noqa: N802
        context = ssl.CertificateOptions().getContext()
        connection = SSL.Connection(context, None)
        connection.set_app_data(tls_protocol)
        connection.set_tlsext_host_name(self.hostname)
        return connection


@implementer(IPolicyForHTTPS)
class InsecurePolicy:
    def creatorForNetloc(self, hostname: bytes, port: int) -> _Unverified:  # noqa: N802
        return _Unverified(hostname)
