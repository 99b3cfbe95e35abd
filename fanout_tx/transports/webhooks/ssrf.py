"""SSRF protection: which callback URLs and addresses the server may connect to (SPEC B2).

Names are resolved here, not by the HTTP client, so the address that was judged is the
address that gets the connection (no DNS rebinding between check and connect). A name with
any refused address is refused as a whole: an attacker controlling DNS could otherwise hide
one internal address among public ones.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from fanout_tx._reactor import IResolvingReactor

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], "Deferred[list[IPAddress]]"]

_PRINTABLE = re.compile(r"[\x21-\x7e]+")


class UrlError(ValueError):
    """A callback URL is malformed or uses a scheme other than http/https."""


class RefusedTargetError(ValueError):
    """A callback URL names (or resolves to) an address the server will not connect to."""


@dataclass(frozen=True)
class CallbackUrl:
    """A parsed callback URL: what to resolve, and how to build the request."""

    url: str
    scheme: str
    netloc: str
    host: str
    port: int
    path: str
    query: str

    def joined(self, path: str, query: str) -> str:
        """The URL with ``path`` appended to its path and ``query`` added to its query."""
        full_path = (self.path.rstrip("/") + path) if path else self.path
        full_query = "&".join(q for q in (self.query, query) if q)
        query_part = f"?{full_query}" if full_query else ""
        return f"{self.scheme}://{self.netloc}{full_path or '/'}{query_part}"


def parse_url(url: Any) -> CallbackUrl:
    """Validate a callback URL; raises UrlError with the reason."""
    if not isinstance(url, str) or not url:
        raise UrlError("url must be a non-empty string")
    if len(url) > 2048 or not _PRINTABLE.fullmatch(url):
        raise UrlError("url must be at most 2048 printable ASCII characters without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlError(f"invalid url: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlError("url scheme must be http or https")
    if "@" in parts.netloc:
        raise UrlError("url may not contain user information")
    if parts.fragment or url.endswith("#"):
        raise UrlError("url may not contain a fragment")
    host = parts.hostname
    if not host:
        raise UrlError("url has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    return CallbackUrl(url, parts.scheme, parts.netloc, host, port, parts.path, parts.query)


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# IPv6 prefixes whose last 32 bits are an IPv4 address a gateway or the host may reach:
# NAT64 (RFC 6052), IPv4-compatible (deprecated), IPv4-translated (SIIT).
_EMBEDS_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96",
                                                        "::ffff:0:0:0/96"))
# Never a public destination, though Python's ``is_global`` says so: local-use NAT64
# (RFC 8215, whatever IPv4 it embeds) and the deprecated site-local range.
_NEVER_PUBLIC = tuple(ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "fec0::/10"))


def _judged(address: IPAddress) -> IPAddress:
    """An IPv6 address that embeds an IPv4 one (mapped, 6to4, NAT64, IPv4-compatible or
    -translated) is judged as that IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return embedded
        if any(address in net for net in _EMBEDS_IPV4):
            return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address


class AddressPolicy:
    """Global unicast addresses only, plus whatever ``[webhooks] allow_cidrs`` lists."""

    def __init__(self, allow_cidrs: Sequence[IPNetwork] = ()) -> None:
        self._allowed = tuple(allow_cidrs)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or None when it may be used."""
        judged = _judged(address)
        for net in self._allowed:
            if any(a.version == net.version and a in net for a in (address, judged)):
                return None
        if (judged.is_multicast or judged.is_unspecified or not judged.is_global
                or any(address in net for net in _NEVER_PUBLIC)):
            return f"address {address} is not a public address (allow it with allow_cidrs)"
        return None


class Vetter:
    """Resolves a target's host and judges every address; the vetted list is what to use."""

    def __init__(self, resolver: Resolver, policy: AddressPolicy) -> None:
        self._resolver = resolver
        self._policy = policy

    async def vet(self, target: CallbackUrl) -> list[IPAddress]:
        """Raises RefusedTargetError naming the refused address or the resolution failure."""
        literal = literal_address(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self._resolver(target.host, target.port)
            except Exception as e:
                raise RefusedTargetError(f"cannot resolve {target.host}: {e}") from None
            if not addresses:
                raise RefusedTargetError(f"{target.host} has no address")
        for address in addresses:
            reason = self._policy.refusal(address)
            if reason is not None:
                raise RefusedTargetError(f"{target.host}: {reason}")
        return addresses


def threaded_resolver(reactor: IResolvingReactor) -> Resolver:
    """The system resolver (getaddrinfo) in the reactor's thread pool."""

    def lookup(host: str, port: int) -> list[IPAddress]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))

    def resolve(host: str, port: int) -> Deferred[list[IPAddress]]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), lookup, host, port)

    return resolve
