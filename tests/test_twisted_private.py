"""Canaries for fanout_tx/_twisted.py: each private hook exercised on a real object. A
failure names the installed Twisted/autobahn/wokkel versions: a release changed a private
name fanout_tx relies on; update _twisted.py and the pin in setup.cfg."""

from __future__ import annotations

import base64
import functools
import hashlib
import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish

from fanout_tx import _twisted

DEADLINE = 5.0
VERSIONS = ", ".join(f"{name} {version(name)}" for name in ("twisted", "autobahn", "wokkel"))


def changed(what: str) -> str:
    return (f"{what}: a private hook changed with {VERSIONS}. "
            "Update fanout_tx/_twisted.py and the pins in setup.cfg.")


def canary(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A missing or re-typed private name fails the test with ``changed(what)`` too."""
    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(test):
            @functools.wraps(test)
            async def run_async(self: Any) -> None:
                try:
                    await test(self)
                except (AttributeError, TypeError) as e:
                    self.fail(f"{changed(what)} ({e!r})")
            return run_async

        @functools.wraps(test)
        def run(self: Any) -> None:
            try:
                test(self)
            except (AttributeError, TypeError) as e:
                self.fail(f"{changed(what)} ({e!r})")
        return run
    return wrap


class _Sink(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.received = b""
        self.factory.connected.callback(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data


class TcpCanaries(TestCase):
    @canary("tcp.Connection.writeSomeData/_tempDataBuffer")
    async def test_send_directly_writes_at_once_on_real_tcp(self) -> None:
        """``writeSomeData`` sends at once on an idle connection; once ``write`` has queued
        (``_tempDataBuffer``), everything is left for ``write`` so order holds."""
        server_factory = Factory.forProtocol(_Sink)
        server_factory.connected = _deferred()
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port,
                                          timeout=DEADLINE).connect(Factory.forProtocol(Protocol))
        self.addCleanup(client.transport.loseConnection)
        sink = await server_factory.connected
        left = _twisted.send_directly(client.transport, b"now")
        self.assertEqual(left, b"", changed("tcp.Connection.writeSomeData/_tempDataBuffer"))
        self.assertEqual(client.transport.dataBuffer, b"")
        client.transport.write(b"queued")
        self.assertEqual(_twisted.send_directly(client.transport, b"later"), b"later",
                         changed("tcp.Connection._tempDataBuffer"))
        await _until(lambda: sink.received == b"nowqueued")

    @canary("tcp.Client.connector, Connector.transport, endpoints _WrappingFactory._connector")
    async def test_release_client_connection_unlinks_the_connector(self) -> None:
        """At a client protocol's connectionLost, the connector and the endpoint's wrapping
        factory stop pointing at the connection and at each other."""
        server_factory = Factory.forProtocol(_Sink)
        server_factory.connected = _deferred()
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        lost = _deferred()

        class Released(Protocol):
            def connectionLost(self, reason: object = None) -> None:  # noqa: N802
                _twisted.release_client_connection(self.transport)
                lost.callback(self.transport)

        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port,
                                          timeout=DEADLINE).connect(Factory.forProtocol(Released))
        connector = client.transport.connector
        self.assertIs(connector.transport, client.transport, changed("Connector.transport"))
        self.assertIs(connector.factory._connector, connector,
                      changed("_WrappingFactory._connector"))
        await server_factory.connected
        client.transport.loseConnection()
        await lost
        self.assertIsNone(connector.transport)
        self.assertIsNone(connector.factory._connector)
        await _until(lambda: connector.state == "disconnected")  # its loss still reported

    @canary("StreamServerEndpointService._waitingForPort/_raiseSynchronously")
    async def test_listening_port_and_raise_bind_errors(self) -> None:
        """``_waitingForPort`` fires with the port; ``_raiseSynchronously`` makes a bind
        failure raise from startService."""
        first = StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory())
        first.startService()
        self.addCleanup(first.stopService)
        port = await _twisted.listening_port(first).addTimeout(DEADLINE, reactor)
        self.assertGreater(port.getHost().port, 0, changed("_waitingForPort"))
        second = StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, port.getHost().port, interface="127.0.0.1"), Factory())
        _twisted.raise_bind_errors(second)
        self.assertRaises(CannotListenError, second.startService)


class WebCanaries(TestCase):
    @canary("Headers._rawHeaders, http_headers._nameEncoder")
    def test_checked_headers(self) -> None:
        """``checked_headers`` fills a Headers that reads as one built header by header."""
        headers = _twisted.checked_headers([(b"content-type", b"a"), (b"X-Y", b"1"),
                                            (b"x-y", b"2"), (b"etag", b"e")])
        self.assertEqual(headers.getRawHeaders(b"X-y"), [b"1", b"2"], changed("Headers"))
        self.assertEqual(list(headers.getAllRawHeaders()),
                         [(b"Content-Type", [b"a"]), (b"X-Y", [b"1", b"2"]),
                          (b"ETag", [b"e"])], changed("Headers"))

    @canary("twisted.web.client._HTTP11ClientFactory")
    def test_pool_factory_log_namespace(self) -> None:
        """The pool's factory logs "Starting factory" under the namespace ops/logs.py quiets."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        HTTPConnectionPool._factory(lambda _protocol: None, None).doStart()
        self.assertIn(_twisted.HTTP_CLIENT_FACTORY_NAMESPACE,
                      [e.get("log_namespace") for e in events],
                      changed("twisted.web.client._HTTP11ClientFactory"))

    @canary("IOpenSSLTrustRoot._addCACertsToContext")
    def test_trust_root(self) -> None:
        """Twisted's TLS options call ``_addCACertsToContext`` on a trust root."""
        contexts: list[Any] = []

        class Root(_twisted.TrustRoot):
            def add_to(self, context: Any) -> None:
                contexts.append(context)

        CertificateOptions(trustRoot=Root()).getContext()
        self.assertEqual(len(contexts), 1, changed("IOpenSSLTrustRoot._addCACertsToContext"))


class XmlCanaries(TestCase):
    @canary("domish._onCdata")
    def test_add_cdata(self) -> None:
        """domish's ``_onCdata`` adds text to the element being built."""
        stream = domish.elementStream()
        elements: list[domish.Element] = []
        stream.DocumentStartEvent = lambda _root: None
        stream.ElementEvent = elements.append
        stream.parser.CharacterDataHandler = lambda text: _twisted.add_cdata(stream, text)
        stream.parse(b"<root><x>hi</x>")
        self.assertEqual([str(e) for e in elements], ["hi"], changed("domish._onCdata"))

    @canary("domish.ExpatElementStream._onStartElement/_onEndElement/_onCdata")
    def test_element_stream_hooks(self) -> None:
        """expat reaches domish's handlers by their private names, which the hooks extend."""
        seen: list[str] = []

        class Recording(_twisted.ElementStreamHooks):
            def start_element(self, name: str, attrs: dict[Any, str]) -> None:
                seen.append("start")
                super().start_element(name, attrs)

            def end_element(self, name: str) -> None:
                seen.append("end")
                super().end_element(name)

            def cdata(self, data: str) -> None:
                seen.append("cdata")
                super().cdata(data)

        stream = Recording()
        elements: list[domish.Element] = []
        stream.DocumentStartEvent = lambda _root: None
        stream.ElementEvent = elements.append
        stream.parse(b"<root><x>hi</x>")
        self.assertEqual(seen, ["start", "start", "cdata", "end"],
                         changed("domish.ExpatElementStream._on* handlers"))
        self.assertEqual([(e.name, str(e)) for e in elements], [("x", "hi")])

    @canary("XmlStream._initializeStream")
    def test_stream_init_hook(self) -> None:
        """XmlStream builds its element stream through ``_initializeStream`` on connect and
        on a stream restart (``reset``)."""
        built: list[Any] = []

        class Recording(_twisted.StreamInitHook):
            def stream_initialized(self) -> None:
                built.append(self.stream)

        protocol = Recording(xmlstream.Authenticator())
        protocol.makeConnection(StringTransport())
        protocol.reset()
        self.assertEqual(len(built), 2, changed("XmlStream._initializeStream"))
        self.assertIs(built[-1], protocol.stream)

    @canary("wokkel Component._getConnection")
    def test_connecting_component(self) -> None:
        """wokkel's Component opens its connection through ``_getConnection``."""
        calls: list[str] = []

        class Link:
            def disconnect(self) -> None:
                calls.append("disconnect")

        class Connecting(_twisted.ConnectingComponent):
            def connect(self) -> Any:
                calls.append("connect")
                return Link()

        component = Connecting("127.0.0.1", 1, "component.example", "secret")
        component.startService()
        component.stopService()
        self.assertEqual(calls, ["connect", "disconnect"], changed("Component._getConnection"))


class WebSocketCanaries(TestCase):
    @canary("WebSocketProtocol._perMessageCompress")
    def test_compressing(self) -> None:
        """``_perMessageCompress`` is set once permessage-deflate is agreed."""
        for offer, expected in ((b"", False), (b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
                                               True)):
            factory = WebSocketServerFactory(reactor=Clock())
            factory.protocol = WebSocketServerProtocol
            factory.setProtocolOptions(perMessageCompressionAccept=lambda offers: next(
                (PerMessageDeflateOfferAccept(o) for o in offers
                 if isinstance(o, PerMessageDeflateOffer)), None))
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  + offer + b"\r\n")
            self.assertIn(b" 101 ", transport.value().split(b"\r\n")[0])
            self.assertEqual(_twisted.compressing(protocol), expected,
                             changed("WebSocketProtocol._perMessageCompress"))

    @canary("WebSocketProtocol._parseExtensionsHeader")
    def test_extension_filtering(self) -> None:
        """autobahn checks the answer's extensions through ``_parseExtensionsHeader``: one
        it does not know fails the handshake unless filtered out."""
        for protocol_class, opens in ((WebSocketClientProtocol, False),
                                      (_GripAllowed, True)):
            factory = WebSocketClientFactory("ws://127.0.0.1:9/", reactor=Clock())
            factory.protocol = protocol_class
            factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                       serverConnectionDropTimeout=0)
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            key = next(line.split(b": ", 1)[1] for line in transport.value().split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            transport.registerProducer(protocol, True)  # a refused handshake unregisters it
            accept = base64.b64encode(hashlib.sha1(
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                                  + b"\r\nSec-WebSocket-Extensions: grip\r\n\r\n")
            self.assertEqual(protocol.state == protocol.STATE_OPEN, opens,
                             changed("WebSocketProtocol._parseExtensionsHeader"))


class _GripAllowed(_twisted.ExtensionFilteringClientProtocol):
    ignored_extensions = frozenset({"grip"})


def _deferred() -> Any:
    from twisted.internet.defer import Deferred
    return Deferred().addTimeout(DEADLINE, reactor)


async def _until(condition: Any) -> None:
    from twisted.internet.task import deferLater
    for _ in range(int(DEADLINE / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met within the deadline")
