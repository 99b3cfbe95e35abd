"""The ``websocket`` service: builds the handler the proxy delegates upgrades to, and owns
what it needs at run time (the connection pool to WebSocket-over-HTTP origins)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from typing_extensions import override

from fanout_tx.config import Config
from fanout_tx.http.origin import ProxySettings
from fanout_tx.router import Router
from fanout_tx.ws.handler import WebSocketHandler
from fanout_tx.ws.protocol import ClientFactory
from fanout_tx.ws.proxy import endpoint_connector


class WebSocketService(Service):
    def __init__(self, handler: WebSocketHandler, pool: HTTPConnectionPool) -> None:
        self.handler = handler
        self.pool = pool

    @override
    def stopService(self) -> Deferred[None]:
        """Clients hear 1001 (going away); origins hear CLOSE; once every session has
        ended (the root service bounds the wait), the pool closes."""
        super().stopService()
        sessions = list(self.handler.sessions)
        for session in sessions:
            session.close_client(1001, "server shutting down")
        ended = DeferredList([session.finished for session in sessions])
        return ended.addCallback(lambda _: self.pool.closeCachedConnections())


def client_factory(config: Config, clock: IReactorTime) -> ClientFactory:
    """The factory for every client WebSocket, with the ``[websocket]`` limits."""
    return ClientFactory(max_message=config.websocket.max_message,
                         max_outbound=config.websocket.max_outbound, clock=clock)


def build_websocket_service(config: Config, routes: Any, router: Router,
                            reactor: Any) -> WebSocketService:
    factory = client_factory(config, reactor)
    router.add_renderer("ws-message", factory.render)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    handler = WebSocketHandler(routes, router, Agent(reactor, pool=pool), reactor,
                               ProxySettings.from_config(config), factory,
                               endpoint_connector(reactor))
    return WebSocketService(handler, pool)
