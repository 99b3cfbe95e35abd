"""The ``websocket`` service: builds the handler the proxy delegates upgrades to, and owns
what it needs at run time (the client to WebSocket-over-HTTP origins: the proxy's lean
HTTP/1.1 client, so event POSTs get its persistent connections and quick ACKs)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import BrowserLikePolicyForHTTPS
from typing_extensions import override

from fanout_tx.config.settings import Config
from fanout_tx.core.router import Router
from fanout_tx.outbound.origin import InsecurePolicy, OriginEndpoints, ProxySettings
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.write_budget import WriteBudget
from fanout_tx.transports.ws.handler import WebSocketHandler
from fanout_tx.transports.ws.protocol import ClientFactory
from fanout_tx.transports.ws.proxy import endpoint_connector


class WebSocketService(Service):
    def __init__(self, handler: WebSocketHandler, origins: tuple[OriginClient, ...]) -> None:
        self.handler = handler
        self.origins = origins

    @override
    def stopService(self) -> Deferred[None]:
        """Clients hear 1001 (going away); origins hear CLOSE; once every session has
        ended (the root service bounds the wait), the idle origin connections close."""
        super().stopService()
        sessions = list(self.handler.sessions)
        for session in sessions:
            session.close_client(1001, "server shutting down")
        ended = DeferredList([session.finished for session in sessions])
        return ended.addCallback(lambda _: DeferredList(
            [origins.closeCachedConnections() for origins in self.origins]))


def client_factory(config: Config, clock: IReactorTime,
                   budget: WriteBudget | None = None) -> ClientFactory:
    """The factory for every client WebSocket, with the ``[websocket]`` limits."""
    return ClientFactory(max_message=config.websocket.max_message,
                         max_outbound=config.websocket.max_outbound, clock=clock,
                         budget=budget)


def build_websocket_service(config: Config, routes: Any, router: Router,
                            reactor: Any, budget: WriteBudget | None = None
                            ) -> WebSocketService:
    factory = client_factory(config, reactor, budget)
    router.add_renderer("ws-message", factory.render)
    # Verified and ``insecure`` TLS connections in pools of their own, as for HTTP routes.
    verified = OriginClient(reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()),
                            max_idle=32)
    insecure = OriginClient(reactor, OriginEndpoints(reactor, InsecurePolicy()), max_idle=32)
    handler = WebSocketHandler(routes, router, verified, reactor,
                               ProxySettings.from_config(config), factory,
                               endpoint_connector(reactor), insecure_agent=insecure)
    return WebSocketService(handler, (verified, insecure))
