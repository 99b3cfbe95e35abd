"""The ``http-proxy`` service: one listener per ``[runner] http_port`` address, and the
origin clients (outbound/origin_client.py; their idle connections closed when the service
stops). Binds nothing until ``startService``."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.logger import LogLevel
from twisted.web.client import BrowserLikePolicyForHTTPS
from typing_extensions import override

from fanout_tx.config.settings import Config, ListenAddress
from fanout_tx.core.router import Router
from fanout_tx.ops.deadlines import ClientTimeouts
from fanout_tx.ops.logs import level_of
from fanout_tx.outbound.origin import InsecurePolicy, OriginEndpoints, ProxySettings
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.http.conn_limit import ConnectionLimit, LimitedEndpoint
from fanout_tx.transports.http.hold import register_renderers
from fanout_tx.transports.http.proxy import ProxyResource, RouteSource, UpgradeRenderer, proxy_site
from fanout_tx.transports.http.tls import ServerIdentities, tls_endpoint
from fanout_tx.transports.write_budget import WriteBudget

# Many clients arrive at once on a push server (reconnect storms); the default of 50 makes
# the kernel drop SYNs and clients wait a second to retry.
BACKLOG = 1024
# Idle origin connections kept per origin. Below the number of requests in flight at once,
# every request past it opens (and then closes) a connection of its own: with 64 busy
# clients and 32 kept, half the requests paid a connect, measured at ~40 % of the proxy's
# throughput.
MAX_PERSISTENT_PER_ORIGIN = 256


class ProxyService(MultiService):
    def __init__(self, clients: tuple[OriginClient, ...], resource: ProxyResource) -> None:
        super().__init__()
        self.clients = clients
        self.resource = resource
        self.connection_limit: ConnectionLimit | None = None  # set by build_proxy_service

    @override
    def stopService(self) -> Deferred[object]:
        d = super().stopService()
        d.addCallback(lambda _: gatherResults(
            [client.closeCachedConnections() for client in self.clients]))
        return d


def client_timeouts(config: Config) -> ClientTimeouts:
    runner = config.runner
    return ClientTimeouts(runner.client_header_timeout, runner.client_keepalive_timeout,
                          runner.client_body_min_rate, runner.client_body_rate_window)


def build_proxy_service(
    config: Config, routes: RouteSource, router: Router, reactor: Any,
    websocket_handler: UpgradeRenderer | None = None,
    tls: tuple[tuple[ListenAddress, ServerIdentities], ...] = (),
    write_budget: WriteBudget | None = None,
) -> ProxyService:
    register_renderers(router)
    # Verified and unverified (route option ``insecure``) TLS connections never share a pool.
    agent = OriginClient(reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()),
                         max_idle=MAX_PERSISTENT_PER_ORIGIN)
    insecure = OriginClient(reactor, OriginEndpoints(reactor, InsecurePolicy()),
                            max_idle=MAX_PERSISTENT_PER_ORIGIN)
    resource = ProxyResource(routes, router, reactor, agent, ProxySettings.from_config(config),
                             insecure_agent=insecure, websocket_handler=websocket_handler,
                             write_budget=write_budget)
    service = ProxyService((agent, insecure), resource)
    runner = config.runner
    # 0: counted, never paused
    limit = ConnectionLimit(runner.client_maxconn, runner.client_maxconn_per_ip)
    service.connection_limit = limit
    site = proxy_site(resource, access_log=level_of(runner.log_level) is LogLevel.debug,
                      connection_limit=limit, client_timeouts=client_timeouts(config))
    endpoints = [
        (f"{address.host}:{address.port}",
         serverFromString(reactor, address.endpoint_description() + f":backlog={BACKLOG}"))
        for address in config.runner.http_ports
    ] + [
        (f"https {address.host}:{address.port}",
         tls_endpoint(reactor, address, identities, BACKLOG))
        for address, identities in tls
    ]
    for name, endpoint in endpoints:
        listener = StreamServerEndpointService(LimitedEndpoint(endpoint, limit), site)
        listener.setName(name)
        listener.setServiceParent(service)
    return service
