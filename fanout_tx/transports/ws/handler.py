"""Requests with ``Upgrade: websocket`` on the client port: route, ask the origin, upgrade.

For an ``over_http`` target the OPEN round trip happens *before* the handshake is
answered, so an origin that refuses gets its status, headers and body relayed as a plain
HTTP response; only an accepted connection is handed to autobahn, with the origin's
headers in the 101. Other targets are proxied to a WebSocket origin (transports/ws/proxy.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from fanout_tx.config.routes import Route, RouteSource, RouteTarget
from fanout_tx.core.headers import end_to_end, is_reason_phrase
from fanout_tx.core.router import Router
from fanout_tx.outbound.origin import ProxySettings, origin_headers, origin_url
from fanout_tx.transports.responses import TEXT_PLAIN, plain, write_response
from fanout_tx.transports.ws.grip import Accepted, ClientSession, Rejected, SessionOptions
from fanout_tx.transports.ws.origin import HttpOrigin
from fanout_tx.transports.ws.protocol import ClientFactory, ClientProtocol, Slot
from fanout_tx.transports.ws.proxy import Connect, WsProxySession, origin_factory
from fanout_tx.transports.ws.session import OriginError, WsOverHttpSession

# As Pushpin: a rejection body relayed to the client is cut at 100 KB.
MAX_REJECT_BODY = 100_000


class _HttpChannel(Protocol):
    """The client port's HTTP channel (transports/http/server_channel.py), as seen here."""

    limit_slot: Slot | None  # its client_maxconn place, which goes with the socket

    def handed_off(self) -> None:
        """The socket is a WebSocket's now: drop the HTTP side's state."""


class _OneConnection:
    """What autobahn's WebSocketResource asks for: a factory building *this* connection's
    protocol, already bound to its session."""

    def __init__(self, factory: ClientFactory, session: ClientSession, accepted: Accepted,
                 limit_slot: Slot | None = None) -> None:
        self._factory = factory
        self._session = session
        self._accepted = accepted
        self._limit_slot = limit_slot

    def buildProtocol(self, addr: IAddress) -> ClientProtocol:  # noqa: N802 - factory API
        # autobahn's buildProtocol is typed as its base protocol's; ours is ClientProtocol
        protocol = cast(ClientProtocol, self._factory.buildProtocol(addr))
        protocol.session = self._session
        protocol.accepted = self._accepted
        # The HTTP channel gives up the socket: its client_maxconn slot goes with it.
        protocol.limit_slot = self._limit_slot
        return protocol


class WebSocketHandler(Resource):
    """Handles one upgrade request at a time; the proxy resource delegates to ``render``."""

    isLeaf = True
    _log = Logger()

    def __init__(
        self, routes: RouteSource, router: Router, agent: IAgent, clock: IReactorTime,
        settings: ProxySettings, factory: ClientFactory, connect: Connect,
        new_connection_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        insecure_agent: IAgent | None = None,
    ) -> None:
        super().__init__()
        self._routes = routes
        self._router = router
        self._agent = agent
        self._insecure_agent = insecure_agent or agent  # for ``insecure`` https targets
        self._clock = clock
        self._settings = settings
        self._factory = factory
        self._connect = connect
        self._new_connection_id = new_connection_id
        self.sessions: set[ClientSession] = set()

    @override
    def render(self, request: Request) -> bytes | int:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        path = request.path.decode("latin-1")
        route = self._routes.table.match(host, path, proto="ws", ssl=request.isSecure())
        if route is None:
            return plain(request, 502, f"No route for host: {host}\n")
        targets = [t for t in route.targets if t.kind == "http"]
        if not targets:
            return plain(request, 502, "Error while proxying to origin.\n")
        query = request.uri.partition(b"?")[2]
        target_path = route.rewrite_path(request.path.decode("latin-1")).encode("latin-1")
        path_and_query = target_path + (b"?" + query if query else b"")
        options = SessionOptions(
            one_event=targets[0].one_event,
            subscriptions=targets[0].subscriptions,
            channel_prefix=route.prefix,
            max_subscriptions=self._settings.connection_subscription_max,
            request_timeout=self._settings.origin_timeout,
        )
        session: ClientSession
        if targets[0].over_http:
            session = self._over_http(request, route, targets, path_and_query, options)
        else:
            session = self._ws_proxy(request, route, targets, path_and_query, options)
        self.sessions.add(session)
        self._run(request, session)
        return NOT_DONE_YET

    def _over_http(self, request: Request, route: Route, targets: list[RouteTarget],
                   path_and_query: bytes, options: SessionOptions) -> WsOverHttpSession:
        settings = self._settings
        origin = HttpOrigin(
            self._clock,
            [(origin_url(t, path_and_query), self._insecure_agent if t.insecure else self._agent)
             for t in targets],
            lambda now: origin_headers(request, route, targets[0], settings, now),
            self._new_connection_id(),
        )
        return WsOverHttpSession(origin, self._router, self._clock, options,
                                 on_end=self.sessions.discard)

    def _ws_proxy(self, request: Request, route: Route, targets: list[RouteTarget],
                  path_and_query: bytes, options: SessionOptions) -> WsProxySession:
        headers = origin_headers(request, route, targets[0], self._settings,
                                 self._clock.seconds())
        host_header = (headers.getRawHeaders(b"host") or [b""])[0].decode("latin-1")
        name, _sep, port = host_header.rpartition(":")
        resource = path_and_query.decode("latin-1")
        factories = []
        for target in targets:
            host, port_number = (name, int(port)) if port.isdigit() else (host_header, target.port)
            url = "ws" + origin_url(target, path_and_query).decode("latin-1")[len("http"):]
            factories.append((target, origin_factory(url, host or target.host, port_number,
                                                     resource, headers, self._clock,
                                                     self._factory.max_message)))
        return WsProxySession(self._connect, factories, self._router, self._clock, options,
                              on_end=self.sessions.discard)

    def _run(self, request: Request, session: ClientSession) -> None:
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        d = session.start()
        d.addCallback(self._opened, request, session, gone)
        d.addErrback(self._open_failed, request, gone)

    def _opened(self, outcome: Accepted | Rejected, request: Request, session: ClientSession,
                gone: list[Failure]) -> None:
        if isinstance(outcome, Rejected):
            reason = outcome.reason.decode("latin-1")
            if gone:
                return
            if not 200 <= outcome.code <= 599 or not is_reason_phrase(reason):
                # A 1xx would make the origin's body the client's next answer.
                self._log.warn("WebSocket origin refused the handshake with a status line "
                               "we cannot relay: {code} {reason!r}", code=outcome.code,
                               reason=reason[:80])
                write_response(request, 502, None, TEXT_PLAIN,
                               b"Error while proxying to origin.\n")
                return
            write_response(request, outcome.code, reason or None,
                           end_to_end(outcome.headers, drop={"content-length"}),
                           outcome.body[:MAX_REJECT_BODY])
            return
        if gone:
            session.client_lost()
            return
        channel = cast(_HttpChannel, request.channel)
        WebSocketResource(_OneConnection(self._factory, session, outcome,
                                         channel.limit_slot)).render(request)
        # The socket is the WebSocket's now. The HTTP channel and its request would keep
        # pointing at each other, left for the cyclic collector (issue 19).
        channel.handed_off()
        request.channel = None  # type: ignore[assignment]  # Twisted: HTTPChannel, not Optional

    def _open_failed(self, failure: Failure, request: Request, gone: list[Failure]) -> None:
        if failure.check(OriginError):
            self._log.warn("WebSocket origin failed on OPEN: {reason}",
                           reason=failure.getErrorMessage())
        else:
            self._log.failure("WebSocket open failed", failure)
        if not gone:
            write_response(request, 502, None, TEXT_PLAIN,
                           b"Error while proxying to origin.\n")
