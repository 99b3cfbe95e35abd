"""Start-up lines about ``Grip-Sig``, the proof an origin has that a request came through
this proxy: which origins will get unsigned requests, and the shipped ``changeme`` key on
a proxy reachable beyond loopback (that key is public, so anyone could forge the proof)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from fanout_tx.config.routes import Route
from fanout_tx.config.settings import Config, ListenAddress

# What Pushpin's shipped pushpin.conf (and etc/fanout.conf) sets ``sig_key`` to.
SHIPPED_KEY = b"changeme"


def _loopback_only(addresses: Iterable[ListenAddress]) -> bool:
    for address in addresses:
        host = address.host.strip("[]")
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:  # "" (every interface) or a host name
            return False
    return True


def signing_warnings(config: Config, routes: Iterable[Route]) -> list[str]:
    """One line per problem, for the start-up log (empty when every origin request is
    signed with a key of the operator's own)."""
    proxy = config.proxy
    lines = []
    # Pushpin's built-in test target asks no origin.
    routes = [r for r in routes if any(t.kind == "http" for t in r.targets)]
    unsigned = [route for route in routes if not (route.sig_key or proxy.sig_key)]
    if unsigned:
        lines.append(
            "origin requests will not be signed (no Grip-Sig) on "
            + ("every route" if len(unsigned) == len(routes) else
               "routes at line " + ", ".join(str(r.line) for r in unsigned))
            + ": set [proxy] sig_key (or the route's sig_key=) so origins can tell "
            "requests that came through this proxy")
    if config.xmpp.enabled and not (config.xmpp.sig_key or proxy.sig_key):
        lines.append("XMPP backend requests will not be signed (no Grip-Sig): set [xmpp] "
                     "sig_key or [proxy] sig_key")
    shipped = proxy.sig_key == SHIPPED_KEY or any(r.sig_key == SHIPPED_KEY for r in routes)
    listeners = (*config.runner.http_ports, *config.runner.https_ports)
    if shipped and not _loopback_only(listeners):
        lines.append(
            "sig_key is the shipped 'changeme' and the proxy listens beyond loopback: "
            "anyone can sign requests your origins will trust; set a secret sig_key "
            "(and the same key in your backend)")
    return lines
