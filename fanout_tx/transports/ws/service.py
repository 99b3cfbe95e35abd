"""The ``websocket`` service: builds the handler the proxy delegates upgrades to, talking to
WebSocket-over-HTTP origins through the origin clients tap.py hands in (the proxy's lean
HTTP/1.1 client, so event POSTs get its persistent connections and quick ACKs)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from typing_extensions import override

from fanout_tx._reactor import IConnectingReactor
from fanout_tx.config.settings import Config
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import OriginClients
from fanout_tx.outbound.origin import ProxySettings
from fanout_tx.transports.write_batch import WriteBatch
from fanout_tx.transports.write_budget import WriteBudget
from fanout_tx.transports.ws.handler import WebSocketHandler
from fanout_tx.transports.ws.protocol import ClientFactory
from fanout_tx.transports.ws.proxy import endpoint_connector


class WebSocketService(Service):
    def __init__(self, handler: WebSocketHandler) -> None:
        self.handler = handler

    def session_count(self) -> int:
        """WebSocket sessions open now (native and over HTTP), for /metrics."""
        return len(self.handler.sessions)

    @override
    def stopService(self) -> Deferred[None]:
        """Clients hear 1001 (going away); origins hear CLOSE; fires once every session has
        ended (the root service bounds the wait, then closes the idle origin connections)."""
        super().stopService()
        sessions = list(self.handler.sessions)
        for session in sessions:
            session.close_client(1001, "server shutting down")
        ended = DeferredList([session.finished for session in sessions])
        return ended.addCallback(lambda _: None)


def client_factory(config: Config, clock: IReactorTime,
                   budget: WriteBudget | None = None) -> ClientFactory:
    """The factory for every client WebSocket, with the ``[websocket]`` limits."""
    return ClientFactory(max_message=config.websocket.max_message,
                         max_outbound=config.websocket.max_outbound, clock=clock,
                         batch=WriteBatch(clock), budget=budget)


def build_websocket_service(config: Config, routes: Any, router: Router,
                            reactor: IConnectingReactor, clients: OriginClients,
                            budget: WriteBudget | None = None) -> WebSocketService:
    factory = client_factory(config, reactor, budget)
    router.add_renderer("ws-message", factory.render)
    handler = WebSocketHandler(routes, router, clients.verified, reactor,
                               ProxySettings.from_config(config), factory,
                               endpoint_connector(reactor), insecure_agent=clients.insecure)
    return WebSocketService(handler)
