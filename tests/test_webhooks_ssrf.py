"""SSRF protection (SPEC B2): URL checks, the address table, and that the connection goes
to the vetted address and nowhere else. No traffic leaves this process here: the client
tests run on a MemoryReactor."""

from __future__ import annotations

import contextlib
import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.webhooks.client import WebhookClient, trust_root
from fanout_tx.transports.webhooks.ssrf import (
    AddressPolicy,
    IPAddress,
    RefusedTargetError,
    UrlError,
    Vetter,
    parse_url,
)

REFUSED_BY_DEFAULT = [
    "http://127.0.0.1/", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.1.2.3]/",
    "http://100.64.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://0.0.0.0/",
    "http://224.0.0.1/", "http://[ff02::1]/", "http://[fe80::1]/", "http://[fc00::1]/",
    "http://192.0.2.1/", "http://[::]/", "http://240.0.0.1/", "http://[2002:7f00:1::]/",
    "http://private.example/", "http://mixed.example/", "http://localhost/",
    # IPv4 inside IPv6 that a gateway or the host would reach: NAT64, IPv4-compatible,
    # IPv4-translated; local-use NAT64 and site-local are never public
    "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b::7f00:1]/", "http://[::a9fe:a9fe]/",
    "http://[::ffff:0:a9fe:a9fe]/", "http://[64:ff9b:1::808:808]/", "http://[fec0::1]/",
]

DNS = {
    "private.example": ["10.0.0.7"],
    "mixed.example": ["93.184.216.34", "192.168.0.1"],  # one bad address spoils the name
    "localhost": ["127.0.0.1", "::1"],
    "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
    "hooks.example": ["127.0.0.5"],
}


def fake_resolver(host: str, port: int) -> Deferred[list[IPAddress]]:
    if host not in DNS:
        return fail(OSError("Name or service not known"))
    return succeed([ipaddress.ip_address(a) for a in DNS[host]])


class UrlTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Scheme, host (brackets stripped), default ports, path and query are kept."""
        target = parse_url("https://[::1]/a?b=1")
        self.assertEqual((target.scheme, target.host, target.port, target.path, target.query),
                         ("https", "::1", 443, "/a", "b=1"))
        self.assertEqual(parse_url("http://h:8080").port, 8080)

    def test_joined(self) -> None:
        """The format's path is appended to the URL's path and its query added."""
        target = parse_url("http://h:81/base/?k=v")
        self.assertEqual(target.joined("/x", "a=1"), "http://h:81/base/x?k=v&a=1")
        self.assertEqual(target.joined("", ""), "http://h:81/base/?k=v")
        self.assertEqual(parse_url("http://h").joined("", "c=2"), "http://h/?c=2")

    def test_refused_urls(self) -> None:
        """Other schemes, user info, fragments, spaces and bad ports are UrlErrors."""
        for url in ("file:///etc/passwd", "gopher://h/", "http://u@h/", "http://h/#f",
                    "http://h/ a", "http://h:0x1/", "", "http://"):
            self.assertRaises(UrlError, parse_url, url)

    @given(st.text(max_size=40).map(lambda t: "http://" + t) | st.text(max_size=40))
    def test_parse_raises_only_url_error(self, url: str) -> None:
        """Any string is a CallbackUrl or a UrlError, never another exception."""
        with contextlib.suppress(UrlError):
            parse_url(url)


class PolicyTests(SynchronousTestCase):
    def vet(self, url: str, allow: tuple[str, ...] = ()) -> Deferred[list[IPAddress]]:
        policy = AddressPolicy(tuple(ipaddress.ip_network(a) for a in allow))
        return Deferred.fromCoroutine(Vetter(fake_resolver, policy).vet(parse_url(url)))

    def test_table_refused_by_default(self) -> None:
        """Loopback, private, shared, link-local (metadata), multicast, unspecified,
        reserved, documentation, IPv4-mapped and 6to4 forms, and names resolving to any
        of them are refused, each with the address in the reason."""
        for url in REFUSED_BY_DEFAULT:
            failure = self.failureResultOf(self.vet(url), RefusedTargetError)
            self.assertIn("not a public address", str(failure.value), url)

    def test_public_addresses_pass(self) -> None:
        """Global unicast addresses, literal or resolved, are allowed."""
        self.assertEqual(len(self.successResultOf(self.vet("https://public.example/"))), 2)
        self.successResultOf(self.vet("http://93.184.216.34/"))

    def test_unresolvable_name(self) -> None:
        """A name that does not resolve is refused with the resolver's reason."""
        failure = self.failureResultOf(self.vet("http://nowhere.example/"), RefusedTargetError)
        self.assertIn("cannot resolve nowhere.example", str(failure.value))

    def test_allow_cidrs(self) -> None:
        """allow_cidrs opens exactly what it lists; a mapped address counts as its IPv4."""
        allow = ("127.0.0.0/8", "::1/128")
        for url in ("http://127.0.0.1/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
                    "http://localhost/", "http://hooks.example/"):
            self.successResultOf(self.vet(url, allow))
        self.failureResultOf(self.vet("http://10.0.0.1/", allow), RefusedTargetError)


class ClientTests(SynchronousTestCase):
    """The real client on a MemoryReactor: what it would connect to, without connecting."""

    @override
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        allow = (ipaddress.ip_network("127.0.0.0/8"),)
        vetter = Vetter(fake_resolver, AddressPolicy(allow))
        pool = origin_clients(self.reactor, 2).vetted
        self.client = WebhookClient(self.reactor, vetter, pool, 10.0, trust_root(""))

    def test_refused_target_sends_nothing(self) -> None:
        """A refused address is an outcome without a status, and no connection is made."""
        for url in ("http://10.0.0.1/", "http://private.example/", "http://[::1]/"):
            outcome = self.successResultOf(self.client.request("POST", url, [], b"x"))
            self.assertEqual(outcome.status, None)
            self.assertIn("not a public address", outcome.error)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_connects_to_the_vetted_address(self) -> None:
        """For a name, the connection goes to the address that was vetted (not a new
        lookup), on the URL's port; the attempt times out on the injected clock."""
        for scheme in ("http", "https"):
            result = self.client.request("POST", f"{scheme}://hooks.example:8443/x", [], b"x")
            host, port = self.reactor.tcpClients[-1][:2]
            self.assertEqual((host, port), ("127.0.0.5", 8443))
            self.reactor.advance(10)
            self.assertEqual(self.successResultOf(result).error, "timed out after 10s")
