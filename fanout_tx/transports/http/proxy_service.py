"""The ``http-proxy`` service: one listener per ``[runner] http_port`` address, serving
the proxy with the origin clients tap.py hands in (outbound/clients.py). Binds nothing
until ``startService``."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import LogLevel

from fanout_tx._reactor import IListeningReactor
from fanout_tx.config.settings import Config, ListenAddress
from fanout_tx.core.router import Router
from fanout_tx.ops.deadlines import ClientTimeouts
from fanout_tx.ops.logs import level_of
from fanout_tx.outbound.clients import OriginClients
from fanout_tx.outbound.origin import ProxySettings
from fanout_tx.transports.http.conn_limit import ConnectionLimit, LimitedEndpoint
from fanout_tx.transports.http.hold import register_renderers
from fanout_tx.transports.http.proxy import (
    ProxyFactory,
    ProxyResource,
    RouteSource,
    UpgradeRenderer,
)
from fanout_tx.transports.http.tls import ServerIdentities, tls_endpoint
from fanout_tx.transports.write_budget import WriteBudget

# Many clients arrive at once on a push server (reconnect storms); the default of 50 makes
# the kernel drop SYNs and clients wait a second to retry.
BACKLOG = 1024


class ProxyService(MultiService):
    """The client listeners; ``resource`` and ``connection_limit`` are read by /metrics."""

    def __init__(self, resource: ProxyResource, connection_limit: ConnectionLimit) -> None:
        super().__init__()
        self.resource = resource
        self.connection_limit = connection_limit


def client_timeouts(config: Config) -> ClientTimeouts:
    runner = config.runner
    return ClientTimeouts(runner.client_header_timeout, runner.client_keepalive_timeout,
                          runner.client_body_min_rate, runner.client_body_rate_window)


def client_endpoints(config: Config, reactor: IListeningReactor,
                     tls: tuple[tuple[ListenAddress, ServerIdentities], ...] = (),
                     ) -> list[tuple[str, IStreamServerEndpoint]]:
    """A listener per ``http_port`` then per ``https_ports`` address, by name."""
    return [
        (f"{address.host}:{address.port}",
         serverFromString(reactor, address.endpoint_description() + f":backlog={BACKLOG}"))
        for address in config.runner.http_ports
    ] + [
        (f"https {address.host}:{address.port}",
         tls_endpoint(reactor, address, identities, BACKLOG))
        for address, identities in tls
    ]


def build_proxy_service(
    config: Config, routes: RouteSource, router: Router, reactor: IListeningReactor,
    clients: OriginClients,
    websocket_handler: UpgradeRenderer | None = None,
    tls: tuple[tuple[ListenAddress, ServerIdentities], ...] = (),
    write_budget: WriteBudget | None = None,
    endpoints: list[tuple[str, IStreamServerEndpoint]] | None = None,
) -> ProxyService:
    """The proxy on ``endpoints`` (default: client_endpoints; a worker's are the sockets
    it inherited)."""
    register_renderers(router)
    resource = ProxyResource(routes, router, reactor, clients.verified,
                             ProxySettings.from_config(config), insecure_agent=clients.insecure,
                             websocket_handler=websocket_handler, write_budget=write_budget)
    runner = config.runner
    # 0: counted, never paused
    limit = ConnectionLimit(runner.client_maxconn, runner.client_maxconn_per_ip)
    service = ProxyService(resource, limit)
    factory = ProxyFactory(resource, reactor,
                           access_log=level_of(runner.log_level) is LogLevel.debug,
                           connection_limit=limit, client_timeouts=client_timeouts(config))
    if endpoints is None:
        endpoints = client_endpoints(config, reactor, tls)
    for name, endpoint in endpoints:
        listener = StreamServerEndpointService(LimitedEndpoint(endpoint, limit), factory)
        listener.setName(name)
        listener.setServiceParent(service)
    return service
