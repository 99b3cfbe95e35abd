"""Every private Twisted, autobahn and wokkel hook fanout_tx relies on, in one place.

Each name here is outside its library's public API and may change in any release: each has
a canary in tests/test_twisted_private.py that exercises it on a real object and names the
installed version when it breaks, and setup.cfg pins Twisted to the releases those canaries
passed on. Nothing else in fanout_tx touches these names.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from typing_extensions import override
from zope.interface import implementer

from fanout_tx import wokkel_compat

wokkel_compat.install()
from wokkel.component import Component  # noqa: E402 - needs wokkel_compat first

__all__ = [
    "HTTP_CLIENT_FACTORY_NAMESPACE", "ConnectingComponent",
    "ElementStreamHooks", "ExtensionFilteringClientProtocol",
    "StreamInitHook", "TrustRoot",
    "add_cdata", "checked_headers", "compressing", "listening_port", "raise_bind_errors",
    "release_client_connection", "send_directly",
]

_pool_factory = HTTPConnectionPool._factory
HTTP_CLIENT_FACTORY_NAMESPACE = f"{_pool_factory.__module__}.{_pool_factory.__qualname__}"
"""The log namespace of the connection pool's factory, whose per-connection "Starting
factory" lines are quieted (ops/logs.py)."""


def send_directly(transport: object, data: bytes) -> bytes:
    """``writeSomeData`` on a plain TCP/UNIX connection with nothing queued ahead (saves two
    ``epoll_ctl`` per push, see transports/http/hold.py); returns what is left for ``write``."""
    if (
        not isinstance(transport, tcp.Connection)
        or getattr(transport, "TLS", True)
        or not transport.connected
        or transport.disconnecting
        or getattr(transport, "_writeDisconnected", True)
        or transport.dataBuffer
        or getattr(transport, "_tempDataBuffer", True)
    ):
        return data
    sent = transport.writeSomeData(data)
    return data[sent:] if isinstance(sent, int) else data  # an error: write() reports it


def checked_headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    """Headers from name/value pairs a strict parser (llhttp) has already checked: names are
    tokens, values hold no CR, LF or NUL. Twisted's per-value checks (``addRawHeader``) are
    skipped; names still go through its canonical-case cache (private ``_nameEncoder``),
    which ``getRawHeaders`` looks them up by."""
    headers = Headers()
    raw = headers._rawHeaders
    encode = _nameEncoder.encode
    for name, value in pairs:
        key = encode(name)
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    return headers


def listening_port(service: StreamServerEndpointService) -> Deferred[IListeningPort | None]:
    """The Deferred of the service's listen (None when it failed): Twisted keeps it private."""
    return service._waitingForPort


def raise_bind_errors(service: StreamServerEndpointService) -> None:
    """Make ``startService`` raise when it cannot bind, rather than only log (ops/startup.py)."""
    service._raiseSynchronously = True


def release_client_connection(transport: object) -> None:
    """For a client protocol's ``connectionLost``: a TCP client connection and its Connector
    point at each other (``Client.connector``, ``Connector.transport``), and so do the
    Connector and an endpoint's wrapping factory (``factory._connector``). Twisted never
    drops either pair, so every closed origin connection waited for the cyclic collector
    (issue 19). Both links are dead by then: the connector only needs its ``factory`` to
    report the loss, and the wrapping factory its ``_connector`` to cancel a connect."""
    connector = getattr(transport, "connector", None)
    if connector is None:
        return
    connector.transport = None
    factory: Any = getattr(connector, "factory", None)
    if getattr(factory, "_connector", None) is connector:
        factory._connector = None


def add_cdata(stream: domish.ExpatElementStream, text: str) -> None:
    """Hand character data to domish's own handler, from a handler that checks it first."""
    stream._onCdata(text)


class ElementStreamHooks(domish.ExpatElementStream):
    """domish's expat handlers (private ``_onStartElement``, ``_onEndElement``,
    ``_onCdata``) under names a subclass extends, calling ``super()`` to build as usual."""

    def start_element(self, name: str, attrs: dict[Any, str]) -> None:
        domish.ExpatElementStream._onStartElement(self, name, attrs)

    def end_element(self, name: str) -> None:
        domish.ExpatElementStream._onEndElement(self, name)

    def cdata(self, data: str) -> None:
        domish.ExpatElementStream._onCdata(self, data)

    @override
    def _onStartElement(self, name: str, attrs: dict[Any, str]) -> None:
        self.start_element(name, attrs)

    @override
    def _onEndElement(self, name: str) -> None:
        self.end_element(name)

    @override
    def _onCdata(self, data: str) -> None:
        self.cdata(data)


class StreamInitHook(xmlstream.XmlStream):
    """An XmlStream told each time Twisted builds its element stream (private
    ``_initializeStream``: on connect and on every stream restart), to replace it."""

    def stream_initialized(self) -> None:
        """``self.stream`` is new; set its handlers again if it is replaced."""

    @override
    def _initializeStream(self) -> None:
        super()._initializeStream()
        self.stream_initialized()


def compressing(protocol: WebSocketServerProtocol) -> bool:
    """Whether autobahn compresses this connection's messages (permessage-deflate)."""
    return protocol._perMessageCompress is not None


class ExtensionFilteringClientProtocol(WebSocketClientProtocol):
    """A WebSocket client that lets the extensions named in ``ignored_extensions`` through
    the handshake: autobahn fails a handshake that accepts one it does not know."""

    ignored_extensions: frozenset[str] = frozenset()

    @override
    def _parseExtensionsHeader(self, header: str, removeQuotes: bool = True) -> list:  # noqa: N802, N803
        parsed = super()._parseExtensionsHeader(header, removeQuotes)
        return [(name, params) for name, params in parsed if name not in self.ignored_extensions]


class ConnectingComponent(Component):
    """A wokkel component that opens its connection with ``connect()``, not with wokkel's
    own factory (its private ``_getConnection``)."""

    def connect(self) -> Any:
        raise NotImplementedError

    @override
    def _getConnection(self) -> Any:  # noqa: N802
        return self.connect()


@implementer(IOpenSSLTrustRoot)
class TrustRoot:
    """A TLS trust root of our own (Twisted's interface is documented, but lives in the
    private ``_sslverify``): ``add_to(context)`` loads its certificates."""

    def add_to(self, context: Any) -> None:
        raise NotImplementedError

    def _addCACertsToContext(self, context: Any) -> None:  # noqa: N802 - IOpenSSLTrustRoot
        self.add_to(context)
