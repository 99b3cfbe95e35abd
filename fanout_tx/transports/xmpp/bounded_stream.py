"""The component's XML stream with caps on inbound stanza size and on outbound backlog.

twisted.words builds every stanza in memory before anyone sees it (and drops the whole
link past its own 10 MB). Here a stanza that grows past ``max_stanza_size`` bytes stops
being built: the rest of it is parsed and thrown away, and once it ends its top element
(name and attributes, no children) is dispatched as OVERSIZED_EVENT, so the handler can
answer the sender while the link and every other stanza go on. Memory per stanza stays
within the cap and one read. Only a single XML token (a tag, which expat must buffer whole)
larger than the cap and TOKEN_SLACK ends the link, with a ``policy-violation`` stream error.

Outbound, Twisted buffers whatever is written until the XMPP server reads it. The stream is
the transport's push producer, so it knows when the server stops reading (Twisted's own
64 KiB buffer full); it then counts what is written, and past ``max_buffered_bytes`` drops
each further stanza whole (never a cut one: the stream stays valid XML) and dispatches
UNSENT_EVENT, until the buffer has drained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._transport import stream_transport
from fanout_tx._twisted import ElementStreamHooks, StreamInitHook

# Prosody accepts stanzas of up to 256 KiB from clients (c2s_stanza_size_limit) and passes
# them on; stanzas for a push component are small.
DEFAULT_MAX_STANZA_SIZE = 64 * 1024
OVERSIZED_EVENT = "//event/fanout/stanza-too-large"
# Bytes without any parser event (one tag still open) tolerated beyond the cap: one read's
# worth of text is a single event too, so the cap alone would be too strict for small caps.
TOKEN_SLACK = 1024 * 1024

# Bytes written to the link beyond Twisted's own buffer while the XMPP server does not read;
# past it stanzas are dropped. Publishes are at most 64 KiB a stanza.
DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024
UNSENT_EVENT = "//event/fanout/stanza-unsent"
DRAINED_EVENT = "//event/fanout/link-drained"


@dataclass(frozen=True)
class Oversized:
    """What OVERSIZED_EVENT carries: the stanza's top element without children."""

    head: domish.Element
    size: int


@dataclass(frozen=True)
class Unsent:
    """What UNSENT_EVENT carries: the dropped stanza's size and the bytes still waiting."""

    size: int
    buffered: int


class BoundedElementStream(ElementStreamHooks):
    """ExpatElementStream that skips (does not build) stanzas past ``limit`` bytes and
    reports each one's head through ``on_oversized(head, size)``."""

    def __init__(self, limit: int, on_oversized: Callable[[domish.Element, int], None]) -> None:
        super().__init__()
        self._limit = limit
        self._on_oversized = on_oversized
        self._fed = 0  # bytes given to the parser so far
        self._start = 0  # where the stanza being read began
        self._last_event = 0  # where expat last reported anything
        self._head: domish.Element | None = None  # set while skipping a stanza
        self._depth = 0  # open elements of the stanza being skipped

    @override
    def parse(self, buffer: bytes) -> None:
        self._fed += len(buffer)
        self.stanzaSize = 0  # twisted's own cap would drop the link; this one skips
        super().parse(buffer)
        self._check_size()
        if self._fed - self._last_event > self._limit + TOKEN_SLACK:
            raise domish.ParserError(f"an XML tag larger than {self._limit} bytes")

    def _position(self) -> int:
        self._last_event = self.parser.CurrentByteIndex
        return self._last_event

    def _check_size(self) -> None:
        """A stanza being built past the limit: keep its head, drop the rest."""
        if self.currElem is None or self._fed - self._start <= self._limit:
            return
        top, depth = self.currElem, 1
        while top.parent is not None:
            top, depth = top.parent, depth + 1
        self._head = domish.Element((top.uri, top.name), top.defaultUri, dict(top.attributes))
        self._depth = depth
        self.currElem = None
        self.elementCount = 0

    @override
    def start_element(self, name: str, attrs: dict[Any, str]) -> None:
        position = self._position()
        if self._head is not None:
            self._depth += 1
            return
        if self.documentStarted and self.currElem is None:
            self._start = position
        super().start_element(name, attrs)
        self._check_size()

    @override
    def end_element(self, name: str) -> None:
        position = self._position()
        if self._head is not None:
            self._depth -= 1
            if not self._depth:
                head, self._head = self._head, None
                self._on_oversized(head, position - self._start)
            return
        if (self.currElem is not None and self.currElem.parent is None
                and position - self._start > self._limit):
            head = self.currElem
            self.currElem = None
            self.elementCount = 0
            head.children = []
            self._on_oversized(head, position - self._start)
            return
        super().end_element(name)

    @override
    def cdata(self, data: str) -> None:
        self._position()
        if self._head is None:
            super().cdata(data)
            self._check_size()


@implementer(IPushProducer)
class BoundedXmlStream(StreamInitHook):
    """The component link's protocol; ``max_stanza_size`` and ``max_buffered_bytes`` are
    set by the factory. It is its own transport's producer (flow control, above)."""

    max_stanza_size = DEFAULT_MAX_STANZA_SIZE
    max_buffered_bytes = DEFAULT_MAX_BUFFERED_BYTES
    _paused = False
    _backlog = 0  # bytes written since the transport paused us

    @override
    def connectionMade(self) -> None:
        stream_transport(self).registerProducer(self, True)
        super().connectionMade()

    @override
    def send(self, obj: domish.Element | str | bytes) -> None:
        """Write a stanza, or drop it (UNSENT_EVENT) when the server is not reading and
        ``max_buffered_bytes`` are waiting already."""
        if domish.IElement.providedBy(obj):  # serialised as XmlStream.send does
            obj = obj.toXml(prefixes=self.prefixes, defaultUri=self.namespace,
                            prefixesInScope=list(self.prefixes.values()))
        data = obj.encode("utf-8") if isinstance(obj, str) else obj
        if self._paused:
            if self._backlog + len(data) > self.max_buffered_bytes:
                self.dispatch(Unsent(len(data), self._backlog), UNSENT_EVENT)
                return
            self._backlog += len(data)
        super().send(data)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        """Twisted's buffer is empty again: the server reads."""
        self._paused, self._backlog = False, 0
        self.dispatch(self, DRAINED_EVENT)

    def stopProducing(self) -> None:
        self._paused = True  # the connection is going away

    @override
    def stream_initialized(self) -> None:
        stream = BoundedElementStream(self.max_stanza_size, self._oversized)
        stream.DocumentStartEvent = self.onDocumentStart
        stream.ElementEvent = self.onElement
        stream.DocumentEndEvent = self.onDocumentEnd
        self.stream = stream

    def _oversized(self, head: domish.Element, size: int) -> None:
        self.dispatch(Oversized(head, size), OVERSIZED_EVENT)

    @override
    def dataReceived(self, data: bytes) -> None:
        try:
            if self.rawDataInFn:
                self.rawDataInFn(data)
            self.stream.parse(data)
        except domish.ParserError as e:
            # As twisted.words, but the server hears why (policy-violation for our cap).
            if "larger than" in str(e):
                self.sendStreamError(StreamError("policy-violation", text=str(e)))
            self.dispatch(Failure(), xmlstream.STREAM_ERROR_EVENT)
            stream_transport(self).loseConnection()
