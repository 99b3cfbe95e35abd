"""Plain WebSocket proxying: a route without ``over_http`` relays frames to a WebSocket
origin, with the same GRIP semantics as WebSocket-over-HTTP (``c:`` control messages, the
message prefix, subscriptions) when the origin accepts with the ``grip`` extension.

Each hop answers its own pings (autobahn does), so ping and pong are not relayed.

Flow control both ways: while the origin connection's write buffer is full the client is
not read, and while the client connection's is full the origin is not read, so a slow side
holds the backlog in the fast side's socket, not in this process.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.types import ConnectingRequest, ConnectionResponse
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._reactor import IConnectingReactor
from fanout_tx._transport import stream_transport
from fanout_tx._twisted import ExtensionFilteringClientProtocol, release_client_connection
from fanout_tx.config.routes import RouteTarget
from fanout_tx.core.formats.ws import wire_close
from fanout_tx.core.router import Router
from fanout_tx.transports.ws.grip import (
    DEFAULT_OPTIONS,
    Accepted,
    GripSession,
    Rejected,
    SessionOptions,
    WsClient,
    client_headers,
)
from fanout_tx.transports.ws.protocol import DEFAULT_MAX_MESSAGE, release_closed
from fanout_tx.transports.ws.session import OriginError

# Set by autobahn itself on the origin handshake; the client's values are not forwarded.
_HANDSHAKE_OWN = frozenset({
    "host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "upgrade", "connection", "pragma", "cache-control",
})

Connect = Callable[[RouteTarget, WebSocketClientFactory], Deferred[Any]]
_CODE = re.compile(r"[0-9]{3}")  # str.isdigit() takes "²", which int() refuses


def _tcp_endpoint(reactor: IConnectingReactor, host: str, port: int) -> IStreamClientEndpoint:
    """A plain TCP endpoint for an IP literal: HostnameEndpoint resolves even those in a
    thread, and defines a class on every connect (garbage for the cyclic collector)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port)
    plain = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
    return plain(reactor, host, port)


def endpoint_connector(reactor: IConnectingReactor) -> Connect:
    """Connects to a target over TCP, or TLS for ``ssl`` targets (unverified when the
    target says ``insecure``)."""

    def connect(target: RouteTarget, factory: WebSocketClientFactory) -> Deferred[Any]:
        endpoint: Any = _tcp_endpoint(reactor, target.host, target.port)
        if target.ssl:
            options = (CertificateOptions() if target.insecure
                       else optionsForClientTLS(target.host_header or target.host))
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint.connect(factory)

    return connect


@implementer(IPushProducer)
class Backpressure:
    """Registered as the push producer of the connection one side writes to: while that
    connection's buffer is full, ``hold(True)`` stops reading the other side; ``hold(False)``
    starts it again once the buffer drained or the connection ended."""

    def __init__(self, hold: Callable[[bool], None]) -> None:
        self._hold = hold

    def pauseProducing(self) -> None:
        self._hold(True)

    def resumeProducing(self) -> None:
        self._hold(False)

    def stopProducing(self) -> None:
        self._hold(False)  # the writer is gone; the session ends the rest


class OriginProtocol(ExtensionFilteringClientProtocol):
    """The connection to a WebSocket origin, reporting to its WsProxySession."""

    session: WsProxySession | None = None
    factory: OriginFactory

    @override
    def onConnecting(self, transport_details: TransportDetails  # noqa: N802
                     ) -> ConnectingRequest:
        return self.factory.request

    # autobahn refuses extensions it does not know; grip is ours to handle (onConnect)
    ignored_extensions = frozenset({"grip"})

    @override
    def failHandshake(self, reason: str) -> None:  # noqa: N802
        """A non-101 answer: keep its status, headers and the body bytes that came."""
        status = getattr(self, "http_status_line", "") or ""
        parts = status.split(" ", 2)
        if len(parts) >= 2 and _CODE.fullmatch(parts[1]) and parts[1] != "101" and self.session:
            end = self.data.find(b"\r\n\r\n")
            body = self.data[end + 4 :] if end >= 0 else b""
            headers = tuple(self.http_headers.items())
            phrase = parts[2].encode("latin-1") if len(parts) > 2 else b""
            self.session.origin_rejected(Rejected(int(parts[1]), phrase, headers, body))
        super().failHandshake(reason)

    @override
    def onConnect(self, response: ConnectionResponse) -> None:  # noqa: N802
        if self.session is not None:
            self.session.origin_accepted(self, response)

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if self.session is not None:  # None once the session let go of this origin
            self.session.origin_message(payload, isBinary)

    @override
    def onPing(self, payload: bytes) -> None:  # noqa: N802
        """No pong while the origin's socket is full: an origin that pings and never reads
        would queue pongs here without end (RFC 6455 5.5.3 lets a pong answer only the
        latest ping)."""
        if self.session is None or not self.session.client_held:
            super().onPing(payload)

    @override
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        session, self.session = self.session, None
        if session is not None:
            if wasClean:
                session.origin_closed(self.remoteCloseCode, self.remoteCloseReason or "")
            else:
                session.origin_lost(reason or "connection lost")

    @override
    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        super().connectionLost(reason)
        release_closed(self)
        release_client_connection(self.transport)

    def close(self, code: int | None, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            wire_code, raw = wire_close(code, reason)
            if wire_code is None:
                self.sendCloseFrame()
            else:
                self.sendCloseFrame(wire_code, raw)


class OriginFactory(WebSocketClientFactory):
    """One origin handshake's factory: ``request`` is what OriginProtocol connects with."""

    request: ConnectingRequest


def origin_factory(url: str, host: str, port: int, resource: str, headers: Headers,
                   clock: IReactorTime,
                   max_message: int = DEFAULT_MAX_MESSAGE) -> OriginFactory:
    """A client factory for one origin handshake: the proxy's origin headers, the client's
    subprotocols, and ``Sec-WebSocket-Extensions: grip``; origin messages over
    ``max_message`` bytes are refused (1009)."""
    forwarded: dict[str, str] = {}
    protocols: list[str] = []
    for name, values in headers.getAllRawHeaders():
        text = name.decode("latin-1")
        joined = ", ".join(v.decode("latin-1") for v in values)
        if text.lower() == "sec-websocket-protocol":
            protocols = [p.strip() for p in joined.split(",") if p.strip()]
        elif text.lower() not in _HANDSHAKE_OWN:
            forwarded[text] = joined
    forwarded["Sec-WebSocket-Extensions"] = "grip"
    factory = OriginFactory(url, protocols=protocols, reactor=clock)
    factory.noisy = False  # one factory per connection: no start/stop line for each
    factory.protocol = OriginProtocol
    factory.setProtocolOptions(failByDrop=False, maxMessagePayloadSize=max_message,
                               maxFramePayloadSize=max_message)
    factory.request = ConnectingRequest(
        host=host, port=port, resource=resource, headers=forwarded, useragent=None,
        origin=None, protocols=protocols,
    )
    return factory


class WsProxySession(GripSession):
    """One client WebSocket relayed to one origin WebSocket."""

    _log = Logger()

    def __init__(
        self, connect: Connect, targets: Sequence[tuple[RouteTarget, WebSocketClientFactory]],
        router: Router, clock: IReactorTime, options: SessionOptions = DEFAULT_OPTIONS,
        on_end: Callable[[WsProxySession], None] | None = None,
    ) -> None:
        super().__init__(router, clock, options, on_end)
        self._connect = connect
        self._targets = list(targets)
        self._origin: OriginProtocol | None = None
        self._opened: Deferred[Accepted | Rejected] = Deferred()
        self._early: list[tuple[bytes, bool]] = []  # origin messages before attach
        self._closing: tuple[int | None, str] | None = None  # the client's close, relayed
        self.client_held = False  # not reading the client: the origin's buffer is full
        self.origin_held = False  # not reading the origin: the client's buffer is full

    def start(self) -> Deferred[Accepted | Rejected]:
        self._try_next_target()
        return self._opened

    def _try_next_target(self) -> None:
        target, factory = self._targets.pop(0)
        d = self._connect(target, factory)
        d.addCallback(self._connected)
        d.addErrback(self._connect_failed)

    def _connected(self, protocol: OriginProtocol) -> None:
        protocol.session = self

    def _connect_failed(self, failure: Any) -> None:
        if failure.check(ConnectError, DNSLookupError) and self._targets:
            self._try_next_target()
            return
        self._open_error(f"cannot connect to the origin: {failure.getErrorMessage()}")

    def _open_error(self, reason: str) -> None:
        if not self._opened.called:
            self._end()
            self._opened.errback(OriginError(reason))

    # -- origin side ------------------------------------------------------------------------

    def origin_accepted(self, protocol: OriginProtocol, response: ConnectionResponse) -> None:
        self._origin = protocol
        protocol.registerProducer(Backpressure(self._hold_client), True)
        self._hold_origin(True)  # until the client is attached: _early stays one read long
        headers = list(response.headers.items())
        self._take_extension(
            [v for n, v in headers if n.lower() == "sec-websocket-extensions"])
        self._opened.callback(Accepted(response.protocol, client_headers(headers)))

    def origin_rejected(self, rejection: Rejected) -> None:
        if not self._opened.called:
            self._end()
            self._opened.callback(rejection)

    def origin_message(self, payload: bytes, binary: bool) -> None:
        if self._detached:
            return
        if self._client is None and not self._ended:
            self._early.append((payload, binary))
        else:
            self._from_origin(payload, binary)

    def origin_closed(self, code: int | None, reason: str) -> None:
        """The origin closed cleanly: the client gets the same code (unless detached)."""
        self._origin = None
        self._hold_client(False)
        if not self._opened.called:
            self._open_error(f"origin closed during the handshake: {reason}")
            return
        if self._client is not None and not self._detached:
            self._client.close(code, reason)
        self._end_when_idle()

    def origin_lost(self, reason: str) -> None:
        self._origin = None
        self._hold_client(False)
        if not self._opened.called:
            self._open_error(reason)
            return
        if self._client is not None and self._closing is not None:
            self._client.close(*self._closing)  # the client asked to close: its code back
        elif self._client is not None and not self._detached:
            self._log.warn("WebSocket origin connection lost: {reason}", reason=reason)
            self._client.close(1011, "origin connection lost")
        self._end_when_idle()

    # -- client side ------------------------------------------------------------------------

    def attach(self, client: WsClient) -> None:
        self._attach_client(client)
        if self.client_held:
            client.pause_reading()
        client.follow_writes(Backpressure(self._hold_origin))
        self._hold_origin(False)
        early, self._early = self._early, []
        for payload, binary in early:
            self._from_origin(payload, binary)

    def client_message(self, payload: bytes, binary: bool) -> None:
        origin = self._origin
        # Not while the origin side is closing (autobahn failed it, e.g. for a masked
        # frame): its end reaches the client through origin_closed/origin_lost.
        if origin is not None and not self._detached and origin.state == origin.STATE_OPEN:
            origin.sendMessage(payload, binary)

    def client_ping(self, payload: bytes) -> None:
        """Answered by autobahn; not relayed."""

    def client_pong(self, payload: bytes) -> None:
        """Not relayed."""

    def client_closing(self, code: int | None, reason: str) -> None:
        """The client sent its close frame: it goes to the origin, and the origin's close
        frame is the client's reply (origin_closed; as Pushpin). Without an origin to ask
        (detached, gone), the client gets its own code back."""
        self._router.unsubscribe_all(self)
        self._hold_origin(False)  # its close reply must be read
        origin = self._origin
        if origin is None or self._detached or origin.state != origin.STATE_OPEN:
            if self._client is not None:
                self._client.close(code, reason)
            return
        self._closing = (code, reason)
        origin.close(code, reason)

    def client_closed(self, code: int | None, reason: str) -> None:
        self._client = None
        self._stop_client_side()
        self._hold_origin(False)  # its close reply must be read
        if self._origin is not None and not self._detached:
            self._origin.close(code, reason)
        self._end_when_idle()

    def client_lost(self) -> None:
        self._client = None
        self._stop_client_side()
        if self._origin is not None:  # as protocol.abort: no autobahn warning per client
            stream_transport(self._origin).abortConnection()
        self._end_when_idle()

    def _detach(self) -> None:
        if self._detached:
            return
        self._detached = True
        self._hold_client(False)
        self._hold_origin(False)
        if self._origin is not None:
            self._origin.close(None, "")

    def _hold_client(self, hold: bool) -> None:
        """Stop or restart reading the client (only while its messages go to an origin)."""
        hold = hold and self._origin is not None and not self._detached
        if hold != self.client_held:
            self.client_held = hold
            if self._client is not None:
                (self._client.pause_reading if hold else self._client.resume_reading)()

    def _hold_origin(self, hold: bool) -> None:
        """Stop or restart reading the origin (never once detached: its close reply must
        be read)."""
        hold = hold and not self._detached
        origin = self._origin
        if hold != self.origin_held and origin is not None and origin.transport is not None:
            self.origin_held = hold
            transport = stream_transport(origin)
            (transport.pauseProducing if hold else transport.resumeProducing)()

    def _end_when_idle(self) -> None:
        if self._client is None and self._origin is None:
            self._end()
