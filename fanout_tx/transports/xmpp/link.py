"""The component's link to the XMPP server: reconnect with backoff, and a readable state.

A refused handshake (wrong secret: ``not-authorized``; another instance holds the domain:
``conflict``) or an unreachable server is logged as an error naming the cause, counted by
reason for metrics, and retried with a growing delay of at most 30 s. Twisted's factory
resets its delay as soon as TCP connects, which would retry a refused handshake every
second; here the delay is only reset once the handshake succeeded.

Stanzas dropped because the server stopped reading (bounded_stream.py) are counted, and
logged at most once per UNSENT_LOG_INTERVAL, with how many since the last line; the handler
counts those dropped while the link is down (handler.py) in the same place.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from twisted.internet.interfaces import IAddress, IConnector, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish.xmlstream import XmlStreamFactoryMixin
from typing_extensions import override

from fanout_tx.transports.xmpp.bounded_stream import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_STANZA_SIZE,
    DRAINED_EVENT,
    OVERSIZED_EVENT,
    UNSENT_EVENT,
    BoundedXmlStream,
    Unsent,
)

MAX_RETRY_DELAY = 30
UNSENT_LOG_INTERVAL = 10.0


@dataclass
class LinkState:
    """Read by metrics: ``fanout_xmpp_link_up`` and ``fanout_xmpp_link_errors_total{reason}``."""

    up: bool = False
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    # Inbound stanzas over [xmpp] max_stanza_size, dropped: fanout_xmpp_oversized_total
    oversized: int = 0
    # Outbound stanzas dropped (fanout_xmpp_unsent_total{reason}): "link_down" (handler.py)
    # or "max_buffered_bytes", the server not reading (bounded_stream.py).
    unsent: Counter[str] = field(default_factory=Counter)


class LinkFactory(xmlstream.XmlStreamFactory):
    """XmlStreamFactory that keeps ``state`` up to date and backs off on refusals."""

    _log = Logger()
    maxDelay = MAX_RETRY_DELAY
    # Jitter would push some waits past the 30 s bound; one component per domain has no
    # herd of clients to spread out.
    jitter = 0
    # Twisted's "Starting factory" / "Stopping factory" lines, twice per reconnect attempt,
    # say nothing the link's own lines do not.
    noisy = False

    protocol = BoundedXmlStream
    # ReconnectingClientFactory declares ``clock = None`` (documented: an IReactorTime)
    clock: IReactorTime  # type: ignore[assignment]

    def __init__(self, authenticator: xmlstream.ConnectAuthenticator, state: LinkState,
                 clock: IReactorTime, server: str,
                 max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE,
                 max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES) -> None:
        super().__init__(authenticator)
        self.clock = clock
        self.max_stanza_size = max_stanza_size
        self.max_buffered_bytes = max_buffered_bytes
        self.state = state
        self._server = server
        self._refusal: tuple[str, str] | None = None
        self._unlogged = 0  # unsent stanzas not in a log line yet
        self._unsent_logged: float | None = None  # when the last such line was
        self.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._authenticated)
        self.addBootstrap(xmlstream.STREAM_ERROR_EVENT, self._stream_error)
        self.addBootstrap(OVERSIZED_EVENT, self._oversized)
        self.addBootstrap(UNSENT_EVENT, self._unsent)
        self.addBootstrap(DRAINED_EVENT, self._drained)

    @override
    def buildProtocol(self, addr: IAddress | None) -> BoundedXmlStream:
        # Not XmlStreamFactory.buildProtocol: its resetDelay() here defeats the backoff.
        self._refusal = None
        xs = XmlStreamFactoryMixin.buildProtocol(self, addr)
        xs.max_stanza_size = self.max_stanza_size
        xs.max_buffered_bytes = self.max_buffered_bytes
        return xs

    def _oversized(self, _event: object) -> None:
        self.state.oversized += 1

    def _unsent(self, event: Unsent) -> None:
        self.state.unsent["max_buffered_bytes"] += 1
        self._unlogged += 1
        now = self.clock.seconds()
        if self._unsent_logged is not None and now - self._unsent_logged < UNSENT_LOG_INTERVAL:
            return
        self._unsent_logged = now
        self._log.warn(
            "XMPP server {server} is not reading: {count} stanzas dropped, {buffered} bytes "
            "waiting (over [xmpp] max_buffered_bytes, {limit}); next report in "
            "{interval:.0f}s at the earliest",
            server=self._server, count=self._unlogged, buffered=event.buffered,
            limit=self.max_buffered_bytes, interval=UNSENT_LOG_INTERVAL)
        self._unlogged = 0

    def _drained(self, _xs: object) -> None:
        if self._unlogged:
            self._log.warn("XMPP server {server} reads again; {count} more stanzas were "
                           "dropped meanwhile", server=self._server, count=self._unlogged)
            self._unlogged = 0

    def _authenticated(self, _xs: xmlstream.XmlStream) -> None:
        self.resetDelay()
        self.state.up = True
        self._log.info("XMPP component link to {server} is up", server=self._server)

    def _stream_error(self, failure: Failure) -> None:
        if failure.check(StreamError):
            error: StreamError = failure.value
            self._refusal = (error.condition, error.text or "")
        else:
            self._refusal = ("invalid-xml", failure.getErrorMessage())

    @override
    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._failed("unreachable", reason.getErrorMessage())
        super().clientConnectionFailed(connector, reason)

    @override
    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        was_up, self.state.up = self.state.up, False
        if self._refusal is not None:
            self._failed(*self._refusal)
        elif was_up:
            self._failed("connection-lost", reason.getErrorMessage())
        else:
            self._failed("handshake-failed", reason.getErrorMessage())
        super().clientConnectionLost(connector, reason)

    def _failed(self, reason: str, text: str) -> None:
        """Count and log; called before the retry is scheduled, ``self.delay`` away."""
        if not self.continueTrying:
            self._log.info("XMPP component link to {server} closed", server=self._server)
            return
        self.state.errors[reason] += 1
        self.state.last_error = f"{reason}: {text}" if text else reason
        self._log.error(
            "XMPP component link to {server} failed: {reason}{detail}; "
            "retrying in {delay:.1f}s",
            server=self._server, reason=reason, detail=f" ({text})" if text else "",
            delay=self.delay, text=text,
        )
