"""Real WebSocket origins (websocket-events over HTTP, and plain WebSocket) and real autobahn
clients on loopback, and the mixins that put the WebSocket handler between them."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.config.routes import parse_routes
from fanout_tx.core.formats.ws import parse_ws_message
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router
from fanout_tx.outbound.origin import ProxySettings
from fanout_tx.transports.http.server_channel import HttpServerFactory
from fanout_tx.transports.write_batch import WriteBatch
from fanout_tx.transports.ws import events as ev
from fanout_tx.transports.ws.handler import WebSocketHandler
from fanout_tx.transports.ws.protocol import ClientFactory
from fanout_tx.transports.ws.proxy import endpoint_connector
from tests.support.helpers import with_deadline

Answer = Callable[[list[ev.Event], dict[str, str]], tuple[int, list[tuple[str, str]], bytes]]


def events_reply(*events: ev.Event, headers: list[tuple[str, str]] = ()) -> tuple:
    return 200, [("Content-Type", "application/websocket-events"), *headers], \
        ev.encode_events(events)


def grip_echo(events: list[ev.Event], headers: dict[str, str]) -> tuple:
    """Accepts with grip; TEXT "sub:X" subscribes to X, anything else is echoed."""
    out = []
    for event in events:
        if event.name == "OPEN":
            out.append(ev.Event("OPEN"))
        elif event.name == "TEXT" and event.content.startswith(b"sub:"):
            control = {"type": "subscribe", "channel": event.content[4:].decode()}
            out.append(ev.Event("TEXT", b"c:" + json.dumps(control).encode()))
            out.append(ev.Event("TEXT", b"m:subscribed"))
        elif event.name in ("TEXT", "BINARY"):
            out.append(ev.Event(event.name, b"m:" + event.content))
        elif event.name == "CLOSE":
            out.append(ev.Event("CLOSE", event.content))
    return events_reply(*out, headers=[("Sec-WebSocket-Extensions", "grip")])


class WsOverHttpOrigin(Resource):
    """A real origin: records every request and answers with ``answer``."""

    isLeaf = True

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[tuple[dict[str, str], list[ev.Event], bytes]] = []
        self.waiters: list[tuple[Callable[[], bool], Deferred]] = []

    @override
    def render_POST(self, request: Any) -> bytes:  # noqa: N802
        headers = {k.decode().lower(): b", ".join(v).decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read()
        events = ev.decode_events(body)
        self.requests.append((headers, events, request.uri))
        code, reply_headers, reply = self.answer(events, headers)
        request.setResponseCode(code)
        for name, value in reply_headers:
            request.responseHeaders.addRawHeader(name, value)
        self._check_waiters()
        return reply

    def _check_waiters(self) -> None:
        for entry in list(self.waiters):
            if entry[0]():
                self.waiters.remove(entry)
                reactor.callLater(0, entry[1].callback, None)

    def wait_for(self, condition: Callable[[], bool], seconds: float = 30.0) -> Deferred:
        """Fires once ``condition()`` holds after a request; fails after ``seconds``."""
        d: Deferred = Deferred()
        if condition():
            d.callback(None)
        else:
            self.waiters.append((condition, d))
        return with_deadline(d, "the origin never got the awaited requests", seconds)

    def event_names(self) -> list[str]:
        return [e.name for _h, events, _u in self.requests for e in events]


class WsTestClient(WebSocketClientProtocol):
    """Records messages; ``opened``/``closed`` Deferreds and ``wait_messages(n)``."""

    @override
    def onOpen(self) -> None:  # noqa: N802
        self.factory.client = self
        self.factory.opened.callback(self)

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.factory.messages.append((payload, isBinary))
        for n, d in list(self.factory.waiting):
            if len(self.factory.messages) >= n:
                self.factory.waiting.remove((n, d))
                d.callback(self.factory.messages)

    @override
    def onClose(self, wasClean: bool, code: int, reason: str) -> None:  # noqa: N802, N803
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        self.factory.closed.callback((wasClean, code, reason))


class ClientSide(WebSocketClientFactory):
    protocol = WsTestClient

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.messages: list[tuple[bytes, bool]] = []
        self.client: WsTestClient | None = None
        self.waiting: list[tuple[int, Deferred]] = []

    def wait_messages(self, n: int, seconds: float = 30.0) -> Deferred:
        """Fires with the messages once ``n`` have arrived; fails after ``seconds``."""
        d: Deferred = Deferred()
        if len(self.messages) >= n:
            d.callback(self.messages)
        else:
            self.waiting.append((n, d))
        return with_deadline(d, f"the client did not receive {n} messages", seconds)


def listen_endpoint() -> TCP4ServerEndpoint:
    """Loopback, port 0, a backlog deep enough for 100 connects at once."""
    return TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1")


class WsTestMixin:
    """A handler on a loopback port routed to a real origin, both cleaned up after."""

    routes_line = "* {origin},over_http"
    proxy_settings = ProxySettings()
    max_message = 1_000_000

    @inlineCallbacks
    def start(self, answer: Answer, route_line: str | None = None):
        """A real events origin, and the handler routed to it."""
        self.origin = WsOverHttpOrigin(answer)
        origin_port = yield listen_endpoint().listen(Site(self.origin))
        self.addCleanup(origin_port.stopListening)
        yield self.start_handler((route_line or self.routes_line).format(
            origin=f"127.0.0.1:{origin_port.getHost().port}"))

    @inlineCallbacks
    def start_handler(self, line: str):
        self.router = Router(reactor)
        self.factory = ClientFactory(max_message=self.max_message, clock=reactor,
                                     batch=WriteBatch(reactor))
        self.router.add_renderer("ws-message", self.factory.render)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.handler = WebSocketHandler(
            SimpleNamespace(table=parse_routes(line)), self.router, Agent(reactor, pool=pool),
            reactor, self.proxy_settings, self.factory, endpoint_connector(reactor),
        )
        # served as on the client port (transports/http/server_channel.py)
        port = yield listen_endpoint().listen(HttpServerFactory(self.handler, reactor))
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.addCleanup(self._sessions_done)
        self.clients: list[ClientSide] = []

    def _sessions_done(self) -> Deferred:
        return DeferredList([s.finished for s in list(self.handler.sessions)])

    @inlineCallbacks
    def connect(self, path: str = "/ws", **kwargs: Any):
        side = ClientSide(f"ws://127.0.0.1:{self.port}{path}", **kwargs)
        self.clients.append(side)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(side)
        self.addCleanup(self._close_client, side)
        protocol = yield side.opened
        return side, protocol

    @staticmethod
    def _close_client(side: ClientSide) -> Deferred:
        if not side.closed.called:
            side.client.sendClose(1000)
        return side.closed

    def publish(self, channel: str, **fmt: Any) -> None:
        self.router.publish(Item(channel, {"ws-message": parse_ws_message(fmt)}))


class WsGripOrigin(WebSocketServerProtocol):
    """/grip/...: accepts with grip; "sub:X" subscribes, "close" closes with 4003,
    "detach" detaches, "big" sends 2,002 bytes; other messages are echoed with the m:
    prefix plus one unprefixed message. /plain/...: echoes verbatim without grip.
    /reject: 403."""

    @override
    def onConnect(self, request: ConnectionRequest) -> Any:  # noqa: N802
        self.factory.requests.append(request)
        if request.path == "/reject":
            raise ConnectionDeny(403, "Forbidden")
        self.grip = request.path.startswith("/grip")
        return None, ({"Sec-WebSocket-Extensions": "grip"} if self.grip else {})

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if not self.grip:
            self.sendMessage(payload, isBinary)
        elif payload.startswith(b"sub:"):
            control = {"type": "subscribe", "channel": payload[4:].decode()}
            self.sendMessage(b"c:" + json.dumps(control).encode())
            self.sendMessage(b"m:subscribed")
        elif payload == b"close":
            self.sendClose(4003, "origin bye")
        elif payload == b"detach":
            self.sendMessage(b'c:{"type": "detach"}')
        elif payload == b"big":
            self.sendMessage(b"m:" + b"x" * 2000)
        else:
            self.sendMessage(b"not for the client")
            self.sendMessage(b"m:" + payload, isBinary)

    @override
    def onClose(self, wasClean: bool, code: int, reason: str) -> None:  # noqa: N802, N803
        self.factory.closes.append(self.remoteCloseCode)
        if self.factory.closed_waiter is not None:
            waiter, self.factory.closed_waiter = self.factory.closed_waiter, None
            waiter.callback(self.remoteCloseCode)


class WsProxyMixin(WsTestMixin):
    """The handler in plain WebSocket proxy mode, routed to a real autobahn origin
    (``WsGripOrigin``)."""

    @inlineCallbacks
    def start_ws(self):
        self.origin_factory = WebSocketServerFactory()
        self.origin_factory.protocol = WsGripOrigin
        self.origin_factory.requests = []
        self.origin_factory.closes = []
        self.origin_factory.closed_waiter = None
        port = yield listen_endpoint().listen(self.origin_factory)
        self.addCleanup(port.stopListening)
        yield self.start_handler(f"* 127.0.0.1:{port.getHost().port},sub=all")

    def origin_closed(self) -> Deferred:
        d: Deferred = Deferred()
        self.origin_factory.closed_waiter = d
        return d
