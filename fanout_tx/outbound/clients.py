"""The origin clients of the whole server, one per trust policy, built once by tap.py and
handed to every user: the proxy, the WebSocket-over-HTTP sessions and the XMPP backend
share ``verified`` (and the routes marked ``insecure`` share ``insecure``); the webhooks
get ``vetted``, whose every request brings the address it checked (transports/webhooks/
ssrf.py), so its connections never serve a request that was not vetted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import BrowserLikePolicyForHTTPS

from fanout_tx._reactor import IConnectingReactor
from fanout_tx.outbound.origin import InsecurePolicy, OriginEndpoints
from fanout_tx.outbound.origin_client import OriginClient

# Idle origin connections kept per origin. Below the number of requests in flight at once,
# every request past it opens (and then closes) a connection of its own: with 64 busy
# clients and 32 kept, half the requests paid a connect, measured at ~40 % of the proxy's
# throughput.
MAX_PERSISTENT_PER_ORIGIN = 256


@dataclass(frozen=True)
class OriginClients:
    """Verified and unverified TLS never share a pool (origin_client.py says why); nor do
    vetted webhook targets and origins reached by name."""

    verified: OriginClient
    insecure: OriginClient
    vetted: OriginClient

    def close_idle(self) -> Deferred[Any]:
        """Close the shared pools' idle connections, once every user has stopped (the
        webhooks close ``vetted`` themselves, when their last attempt is over)."""
        return gatherResults([self.verified.closeCachedConnections(),
                              self.insecure.closeCachedConnections()])


def origin_clients(reactor: IConnectingReactor, vetted_per_host: int = 1) -> OriginClients:
    """``vetted_per_host``: idle connections kept per webhook target (``[webhooks]
    max_in_flight``). A webhook retry is the delivery engine's decision, never the pool's."""
    return OriginClients(
        verified=OriginClient(reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()),
                              max_idle=MAX_PERSISTENT_PER_ORIGIN),
        insecure=OriginClient(reactor, OriginEndpoints(reactor, InsecurePolicy()),
                              max_idle=MAX_PERSISTENT_PER_ORIGIN),
        vetted=OriginClient(reactor, None, max_idle=max(1, vetted_per_host),
                            resend_stale=False),
    )
