"""The ``xmpp`` service: wokkel's external Component on an injected reactor, with the
handler, the renderer registration and the link state wired together."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.component import ConnectComponentAuthenticator
from twisted.words.protocols.jabber.jid import JID
from typing_extensions import override
from wokkel.subprotocols import StreamManager

from fanout_tx._reactor import IConnectingReactor
from fanout_tx._twisted import ConnectingComponent
from fanout_tx.config.settings import Config
from fanout_tx.core.router import Router
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.xmpp.backend import BackendClient
from fanout_tx.transports.xmpp.bounded_stream import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_STANZA_SIZE,
)
from fanout_tx.transports.xmpp.handler import ComponentHandler
from fanout_tx.transports.xmpp.link import LinkFactory
from fanout_tx.transports.xmpp.render import StanzaRenderer


class XmppComponent(ConnectingComponent):
    """Connects as ``domain`` to ``host:port`` and keeps reconnecting until stopped."""

    _log = Logger()

    def __init__(self, reactor: IConnectingReactor, host: str, port: int, domain: str,
                 secret: str, handler: ComponentHandler,
                 max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE,
                 max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES) -> None:
        # Not Component.__init__: it builds a factory that resets its backoff on every
        # TCP connect; LinkFactory does not, and reports why the link went down.
        self.host, self.port, self.reactor = host, port, reactor
        self.link = handler.link  # one state: the handler counts what it drops there
        authenticator = ConnectComponentAuthenticator(domain, secret)
        StreamManager.__init__(
            self, LinkFactory(authenticator, self.link, reactor, f"{host}:{port}",
                              max_stanza_size, max_buffered_bytes), reactor
        )
        self.handler = handler
        handler.setHandlerParent(self)

    @override
    def connect(self) -> Any:
        return self.reactor.connectTCP(self.host, self.port, self.factory)

    @override
    def initializationFailed(self, reason: Failure) -> None:
        # wokkel stops the service and raises; a long-running server logs and retries.
        self._log.error("XMPP component handshake failed: {reason}",
                        reason=reason.getErrorMessage())
        if self.xmlstream is not None:
            self.xmlstream.transport.loseConnection()

    @override
    def stopService(self) -> Deferred[None]:
        """Disconnects at once; fires once the backend calls in flight (at most
        ``backend_timeout``) have finished (the root then closes the idle HTTP connections)."""
        super().stopService()
        self.handler.subscriptions.drop_all("shutting down")
        return self.handler.when_idle()


def build_xmpp(config: Config, router: Router, reactor: IConnectingReactor,
               origins: OriginClient) -> XmppComponent:
    """The ``[xmpp]`` component; registers the xmpp renderers with ``router``. ``origins``
    is the proxy's lean client (tap.py's verified one): persistent connections, and no 40 ms
    delayed-ACK stall on a backend that writes its answer's head and body apart
    (outbound/tcp_options.py)."""
    xmpp = config.xmpp
    backend = BackendClient(
        origins, reactor, xmpp.backend, xmpp.backend_timeout,
        xmpp.sig_iss or config.proxy.sig_iss, xmpp.sig_key or config.proxy.sig_key,
    )
    domain = JID(xmpp.jid).host
    renderer = StanzaRenderer(domain)
    renderer.install(router)
    handler = ComponentHandler(renderer, backend, router,
                               config.handler.connection_subscription_max)
    return XmppComponent(reactor, xmpp.host, xmpp.port, domain, xmpp.secret, handler,
                         xmpp.max_stanza_size, xmpp.max_buffered_bytes)
