"""The ``http-proxy`` service: one listener per ``[runner] http_port`` address, one shared
connection pool to the origins (closed when the service stops). Binds nothing until
``startService``."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import LogLevel
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from typing_extensions import override

from fanout_tx.config import Config
from fanout_tx.http.hold import register_renderers
from fanout_tx.http.origin import InsecurePolicy, OriginEndpoints, ProxySettings
from fanout_tx.http.proxy import ProxyResource, RouteSource, WebSocketHandler, proxy_site
from fanout_tx.logs import level_of
from fanout_tx.router import Router

# Many clients arrive at once on a push server (reconnect storms); the default of 50 makes
# the kernel drop SYNs and clients wait a second to retry.
BACKLOG = 1024
# Idle origin connections kept per origin. Below the number of requests in flight at once,
# every request past it opens (and then closes) a connection of its own: with 64 busy
# clients and 32 kept, half the requests paid a connect, measured at ~40 % of the proxy's
# throughput.
MAX_PERSISTENT_PER_ORIGIN = 256


class ProxyService(MultiService):
    def __init__(self, pool: HTTPConnectionPool, resource: ProxyResource) -> None:
        super().__init__()
        self.pool = pool
        self.resource = resource

    @override
    def stopService(self) -> Deferred[None]:
        d = super().stopService()
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        return d


def build_proxy_service(
    config: Config, routes: RouteSource, router: Router, reactor: Any,
    websocket_handler: WebSocketHandler | None = None,
) -> ProxyService:
    register_renderers(router)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_ORIGIN
    agent = Agent.usingEndpointFactory(
        reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()), pool=pool)
    insecure = Agent.usingEndpointFactory(
        reactor, OriginEndpoints(reactor, InsecurePolicy()), pool=pool)
    resource = ProxyResource(routes, router, reactor, agent, ProxySettings.from_config(config),
                             insecure_agent=insecure, websocket_handler=websocket_handler)
    service = ProxyService(pool, resource)
    site = proxy_site(resource, access_log=level_of(config.runner.log_level) is LogLevel.debug)
    for address in config.runner.http_ports:
        listener = StreamServerEndpointService(
            serverFromString(reactor, address.endpoint_description() + f":backlog={BACKLOG}"),
            site)
        listener.setName(f"{address.host}:{address.port}")
        listener.setServiceParent(service)
    return service
