"""Requests with ``Upgrade: websocket`` on the client port: route, ask the origin, upgrade.

For an ``over_http`` target the OPEN round trip happens *before* the handshake is
answered, so an origin that refuses gets its status, headers and body relayed as a plain
HTTP response; only an accepted connection is handed to autobahn, with the origin's
headers in the 101. Other targets are proxied to a WebSocket origin (ws/proxy.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from fanout_tx.config import ProxyConfig
from fanout_tx.grip.signature import grip_sig
from fanout_tx.router import Router
from fanout_tx.routes import Route, Target
from fanout_tx.ws.origin import HttpOrigin
from fanout_tx.ws.protocol import ClientFactory, ClientProtocol
from fanout_tx.ws.session import Accepted, OriginError, Rejected, SessionOptions, WsOverHttpSession

# As Pushpin: a rejection body relayed to the client is cut at 100 KB.
MAX_REJECT_BODY = 100_000

_NOT_FORWARDED = frozenset({
    b"connection", b"keep-alive", b"upgrade", b"te", b"transfer-encoding", b"trailer",
    b"content-length", b"content-type", b"accept", b"connection-id", b"host",
    b"sec-websocket-extensions",
})


def origin_headers(request: Request, route: Route, target: Target) -> list[tuple[bytes, bytes]]:
    """The handshake headers as the origin should see them, without hop-by-hop headers,
    client-sent ``Grip-*``, ``Meta-*`` and ``Connection-Id`` (forgery protection)."""
    headers = []
    for name, values in request.requestHeaders.getAllRawHeaders():
        lowered = name.lower()
        if lowered in _NOT_FORWARDED or lowered.startswith((b"grip-", b"meta-", b"proxy-")):
            continue
        headers.extend((name, value) for value in values)
    host = route.as_host or target.host_header or (request.getHeader(b"host") or b"").decode()
    if host:
        headers.append((b"Host", host.encode("idna") if not host.isascii() else host.encode()))
    headers.extend((name.encode(), value.encode()) for name, value in route.headers)
    headers.append((b"Sec-WebSocket-Extensions", b"grip"))
    return headers


class _OneConnection:
    """What autobahn's WebSocketResource asks for: a factory building *this* connection's
    protocol, already bound to its session."""

    def __init__(self, factory: ClientFactory, session: Any, accepted: Accepted) -> None:
        self._factory = factory
        self._session = session
        self._accepted = accepted

    def buildProtocol(self, addr: Any) -> ClientProtocol:  # noqa: N802 - factory API
        protocol = self._factory.buildProtocol(addr)
        protocol.session = self._session
        protocol.accepted = self._accepted
        return protocol


class WebSocketHandler(Resource):
    """Handles one upgrade request at a time; the proxy resource delegates to ``render``."""

    isLeaf = True
    _log = Logger()

    def __init__(
        self, routes: Any, router: Router, agent: IAgent, clock: IReactorTime,
        proxy_config: ProxyConfig, factory: ClientFactory, max_subscriptions: int = 20,
        new_connection_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        super().__init__()
        self._routes = routes
        self._router = router
        self._agent = agent
        self._clock = clock
        self._proxy_config = proxy_config
        self._factory = factory
        self._max_subscriptions = max_subscriptions
        self._new_connection_id = new_connection_id
        self.sessions: set[Any] = set()

    @override
    def render(self, request: Request) -> bytes | int:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        path = request.path.decode("latin-1")
        route = self._routes.table.match(host, path, proto="ws", ssl=request.isSecure())
        if route is None:
            return self._error(request, 502, f"No route for host: {host}")
        targets = [t for t in route.targets if t.kind == "http"]
        if not targets:
            return self._error(request, 502, "Error while proxying to origin.")
        if not targets[0].over_http:
            return self._error(request, 502, "WebSocket origins need an over_http target.")
        self._start_over_http(request, route, targets)
        return NOT_DONE_YET

    def _signer(self, route: Route) -> Callable[[float], str | None]:
        if route.sig_iss and route.sig_key:
            iss, key = route.sig_iss, route.sig_key
        else:
            iss, key = self._proxy_config.sig_iss, self._proxy_config.sig_key
        if not key:
            return lambda now: None
        return lambda now: grip_sig(iss, key, now)

    def _start_over_http(self, request: Request, route: Route, targets: list[Target]) -> None:
        query = request.uri.partition(b"?")[2]
        path = route.rewrite_path(request.path.decode("latin-1")).encode("latin-1")
        path_qs = path + (b"?" + query if query else b"")
        urls = [
            b"%s://%s:%d%s" % (b"https" if t.ssl else b"http", _host_for_url(t.host), t.port,
                               path_qs)
            for t in targets
        ]
        origin = HttpOrigin(
            self._agent, self._clock, urls, origin_headers(request, route, targets[0]),
            self._new_connection_id(), self._signer(route),
        )
        options = SessionOptions(
            one_event=targets[0].one_event,
            subscriptions=targets[0].subscriptions,
            channel_prefix=route.prefix,
            max_subscriptions=self._max_subscriptions,
        )
        session = WsOverHttpSession(origin, self._router, self._clock, options,
                                    on_end=self.sessions.discard)
        self.sessions.add(session)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        d = session.start()
        d.addCallback(self._opened, request, session, gone)
        d.addErrback(self._open_failed, request, gone)

    def _opened(self, outcome: Accepted | Rejected, request: Request, session: Any,
                gone: list[Failure]) -> None:
        if isinstance(outcome, Rejected):
            if gone:
                return
            request.setResponseCode(outcome.code, outcome.reason or None)
            for name, value in outcome.headers:
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    request.responseHeaders.addRawHeader(name, value)
            request.write(outcome.body[:MAX_REJECT_BODY])
            request.finish()
            return
        if gone:
            session.client_lost()
            return
        WebSocketResource(_OneConnection(self._factory, session, outcome)).render(request)

    def _open_failed(self, failure: Failure, request: Request, gone: list[Failure]) -> None:
        if failure.check(OriginError):
            self._log.warn("WebSocket origin failed on OPEN: {reason}",
                           reason=failure.getErrorMessage())
        else:
            self._log.failure("WebSocket open failed", failure)
        if not gone:
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"Error while proxying to origin.\n")
            request.finish()

    @staticmethod
    def _error(request: Request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain")
        return (text + "\n").encode("utf-8")


def _host_for_url(host: str) -> bytes:
    return (f"[{host}]" if ":" in host else host).encode("idna")
