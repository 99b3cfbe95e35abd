"""The autobahn side: one server protocol per client WebSocket, adapting frames to a session.

The factory is shared by every connection. Its ``render`` is registered with the router
for ``ws-message``, so a published message is framed once (``prepareMessage``) and each
subscriber only writes the prepared bytes (``sendPreparedMessage``). Per connection: a
maximum message size (autobahn closes with 1009 past it) and a bounded outbound buffer:
while the transport asks us to pause, bytes sent are counted, and past the limit the
connection is closed with 1008 instead of queueing without end. A session that can slow
down what it sends (a proxied WebSocket origin) follows those pauses instead
(``follow_writes``), so only published frames count against the limit.

A client's close frame is not answered at once (autobahn would say 1000): as Pushpin, the
origin decides the close reply (the CLOSE it answers, or its own close frame when proxying),
so a client closing with 4005 usually gets 4005 back. The wait is bounded
(``CLOSE_REPLY_WAIT``); past it the client gets its own code back.
"""

from __future__ import annotations

from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._transport import stream_transport
from fanout_tx._twisted import compressing
from fanout_tx.core.formats import Format
from fanout_tx.core.formats.ws import is_wire_close_code, wire_close
from fanout_tx.transports.write_batch import WriteBatch
from fanout_tx.transports.write_budget import SlowClient, WriteBudget
from fanout_tx.transports.ws.grip import Accepted, ClientSession

DEFAULT_MAX_MESSAGE = 1_000_000
DEFAULT_MAX_OUTBOUND = 1_000_000

CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
# Seconds a client's close waits for the origin to decide the close reply.
CLOSE_REPLY_WAIT = 5.0


def _valid_close(code: int | None, reason: bytes | None) -> bool:
    """A close frame autobahn would accept (it fails the connection for any other)."""
    if code is not None and not is_wire_close_code(code):
        return False
    try:
        (reason or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@implementer(IPushProducer)
class OutboundGuard:
    """Registered as the transport's push producer: knows when the kernel buffer is full
    and counts what is written meanwhile, also against the server-wide ``budget``
    (transports/write_budget.py) on behalf of ``owner``. ``follower``, when set, is paused, resumed
    and stopped with it."""

    def __init__(self, limit: int, budget: WriteBudget | None = None,
                 owner: SlowClient | None = None) -> None:
        self.limit = limit
        self.paused = False
        self.backlog = 0
        self.follower: IPushProducer | None = None
        self._budget = budget
        self._owner = owner

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True
        if self.follower is not None:
            self.follower.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = False
        self.backlog = 0
        self.release()
        if self.follower is not None:
            self.follower.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True
        if self.follower is not None:
            self.follower.stopProducing()

    def written(self, size: int) -> bool:
        """Count ``size`` bytes; False once the backlog is over the limit."""
        if not self.paused:
            return True
        self.backlog += size
        if self._budget is not None and self._owner is not None:
            self._budget.add(self._owner, size)
        return self.backlog <= self.limit

    def release(self) -> None:
        """Nothing is queued any more (drained, or the connection ended)."""
        if self._budget is not None and self._owner is not None:
            self._budget.release(self._owner)


def release_closed(protocol: WebSocketProtocol) -> None:
    """For ``connectionLost``: autobahn resolves ``is_closed`` with the protocol itself, so
    the two point at each other and every closed WebSocket waited for the cyclic collector
    (issue 19). Its callbacks have run by then; what is left resolves to None."""
    if protocol.is_closed.called:
        protocol.is_closed = succeed(None)


class Slot(Protocol):
    """The connection's ``client_maxconn`` place (transports/http/conn_limit.Slot)."""

    def release(self) -> None: ...


class ClientProtocol(WebSocketServerProtocol):
    """One client connection. ``session`` (a WsOverHttpSession or a ws proxy session) is
    set by the handler before the handshake is replayed; ``accepted`` holds the
    subprotocol and headers for the 101 response."""

    _log = Logger()

    session: ClientSession | None = None
    accepted: Accepted  # set with ``session``, before the handshake
    guard: OutboundGuard | None = None
    limit_slot: Slot | None = None
    # Set by the factory's setProtocolOptions (autobahn declares it on no class)
    maxMessagePayloadSize: int
    # Published frames queued this reactor turn, written as one buffer by the factory's
    # WriteBatch (None: nothing queued).
    _pending: list[bytes] | None = None
    # While the client's close waits for the origin's reply: the timer bounding that wait.
    _close_wait: IDelayedCall | None = None

    @override
    # autobahn types the headers dict[str, str]; it writes each value of an iterable one too
    def onConnect(self, request: ConnectionRequest  # type: ignore[override]  # noqa: N802
                  ) -> tuple[str | None, dict[str, list[str]]]:
        accepted = self.accepted
        subprotocol = accepted.subprotocol
        if subprotocol is not None and subprotocol not in request.protocols:
            subprotocol = None
        return subprotocol, accepted.headers

    @override
    def onOpen(self) -> None:  # noqa: N802
        self.guard = OutboundGuard(self.factory.max_outbound, self.factory.budget, self)
        # twisted.web's HTTPChannel registered itself before the upgrade took the transport
        transport = stream_transport(self)
        transport.unregisterProducer()
        transport.registerProducer(self.guard, True)
        if self.session is not None:  # None once onClose let go of it
            self.session.attach(self)

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if self.session is not None:
            self.session.client_message(payload, isBinary)

    @override
    def onPing(self, payload: bytes) -> None:  # noqa: N802
        if self._room_for(len(payload)):  # autobahn's pong, queued for a client that
            super().onPing(payload)  # does not read, counts as any other frame
        if self.session is not None:
            self.session.client_ping(payload)

    @override
    def onPong(self, payload: bytes) -> None:  # noqa: N802
        if self.session is not None:
            self.session.client_pong(payload)

    @override
    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:  # noqa: N802, N803
        """The client starts the close handshake: the session asks the origin, whose
        answer becomes the reply (``close``); autobahn answers only bad close frames."""
        session = self.session
        if (self.state != self.STATE_OPEN or session is None or self._close_wait is not None
                or not _valid_close(code, reasonRaw)):
            # autobahn types code and reason int and bytes; it calls this with None for each
            # one a close frame leaves out
            return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]
        self.wasClean = True
        self.remoteCloseCode = code
        self.remoteCloseReason = (reasonRaw or b"").decode("utf-8") or None
        self._close_wait = self.factory.clock.callLater(
            self.factory.close_reply_wait, self._close_reply_due)
        session.client_closing(code, self.remoteCloseReason or "")
        return None

    def _close_reply_due(self) -> None:
        self._close_wait = None
        self._reply_close(self.remoteCloseCode, self.remoteCloseReason or "")

    def _reply_close(self, code: int | None, reason: str) -> None:
        """Answer the client's close frame, then drop TCP (as autobahn does as a server)."""
        if self._close_wait is not None:
            self._close_wait.cancel()
            self._close_wait = None
        if self.state != self.STATE_OPEN:
            return
        self.flush()
        self._send_close(code, reason, is_reply=True)
        self.dropConnection(abort=False)

    def _send_close(self, code: int | None, reason: str, is_reply: bool = False) -> None:
        """A close frame with what may be on the wire: an origin's or publisher's code
        that may not (1005, 999, 2000...) becomes a frame without code or reason, and
        the reason is cut to 123 bytes at a character boundary (a cut character would
        be invalid UTF-8, which the client fails the connection for)."""
        wire_code, raw = wire_close(code, reason)
        if wire_code is None:
            if code is not None:
                self._log.info("close code {code} may not be sent; closing without one",
                               code=code)
            self.sendCloseFrame(isReply=is_reply)
            return
        self.sendCloseFrame(wire_code, raw, isReply=is_reply)

    @override
    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self._close_wait is not None:
            self._close_wait.cancel()
            self._close_wait = None
        super().connectionLost(reason)
        release_closed(self)
        guard, self.guard = self.guard, None  # it points back at us (_owner)
        if guard is not None:
            guard.release()
        if self.limit_slot is not None:
            self.limit_slot.release()

    @override
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        session, self.session = self.session, None
        if self.failedByMe:
            self._log.warn("closed a client for bad input: {code} {reason}",
                           code=self.localCloseCode, reason=self.localCloseReason)
        if session is None:
            return
        if wasClean:
            session.client_closed(self.remoteCloseCode, self.remoteCloseReason or "")
        else:
            session.client_lost()

    # -- WsClient ---------------------------------------------------------------------------

    def _room_for(self, size: int) -> bool:
        guard = self.guard
        if guard is None or guard.written(size):
            return True
        self._log.warn("client too slow: over {limit} bytes queued; closing",
                       limit=guard.limit)
        self.close(CLOSE_POLICY, "outbound buffer full")
        return False

    def send_message(self, payload: bytes, binary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return
        if len(payload) > self.maxMessagePayloadSize > 0:
            # Over [websocket] max_message (autobahn would raise): the client cannot be
            # given it, and dropping it silently would lose it.
            self._log.warn("message for the client over {limit} bytes; closing with 1009",
                           limit=self.maxMessagePayloadSize)
            self.close(1009, "message too big")
        elif self._room_for(len(payload)):
            self.flush()
            self.sendMessage(payload, binary)

    def send_prepared(self, prepared: Any) -> None:
        if self.state != self.STATE_OPEN or not self._room_for(len(prepared.payloadHybi)):
            return
        batch = self.factory.batch
        if compressing(self) or self.send_queue or batch is None:
            self.flush()
            self.sendPreparedMessage(prepared)
        elif self._pending is None:
            # What sendPreparedMessage does, minus sendData's per-call debug formatting
            # (half the per-subscriber cost), and queued so a burst of items costs one
            # transport write per client per reactor turn.
            self._pending = [prepared.payloadHybi]
            batch.add(self)
        else:
            self._pending.append(prepared.payloadHybi)

    def flush(self) -> None:
        """Write the queued published frames, in order, as one buffer. Every other send
        calls this first, so frames never overtake each other."""
        pending, self._pending = self._pending, None
        if pending and self.state == self.STATE_OPEN:
            stream_transport(self).write(b"".join(pending))

    def send_ping(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN and self._room_for(len(payload)):
            self.flush()
            self.sendPing(payload[:125] or None)

    def send_pong(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN and self._room_for(len(payload)):
            self.flush()
            self.sendPong(payload[:125] or None)

    def close(self, code: int | None, reason: str) -> None:
        """Server-side close (origin, publish, failure), or the reply to the client's own
        close. Uses the close frame directly: autobahn's sendClose refuses 1008/1011/1012.
        onClose reports the end as usual."""
        if self._close_wait is not None:
            self._reply_close(code, reason)
        elif self.state == self.STATE_OPEN:
            self.flush()
            self._send_close(code, reason)

    def drop_slow(self) -> None:
        """The server-wide buffer budget is spent and this client fell behind first:
        drop it (a close frame would wait behind what it does not read)."""
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection. Not autobahn's dropConnection, which logs a warning for
        every unclean drop: a deliberate one (DISCONNECT) is not worth one per connection."""
        stream_transport(self).abortConnection()

    def follow_writes(self, producer: IPushProducer) -> None:
        """``producer`` is paused while this connection's write buffer is full, resumed
        once it drained, and stopped when the connection ends."""
        if self.guard is not None:
            self.guard.follower = producer
            if self.guard.paused:
                producer.pauseProducing()

    def pause_reading(self) -> None:
        stream_transport(self).pauseProducing()

    def resume_reading(self) -> None:
        stream_transport(self).resumeProducing()


class ClientFactory(WebSocketServerFactory):
    """Shared by every client WebSocket; renders published ``ws-message`` items once."""

    protocol = ClientProtocol

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_outbound: int = DEFAULT_MAX_OUTBOUND,
                 *, clock: IReactorTime, batch: WriteBatch | None = None,
                 close_reply_wait: float = CLOSE_REPLY_WAIT,
                 budget: WriteBudget | None = None) -> None:
        # No Server header of our own: the origin's (if any) is relayed, as Pushpin does.
        super().__init__(server=None, reactor=clock)
        self.max_message = max_message
        self.max_outbound = max_outbound
        self.budget = budget  # [runner] max_buffered_bytes, shared with HTTP streams
        # With a batch, published frames are coalesced per client per reactor turn;
        # without one (in-memory tests) they are written at once.
        self.batch = batch
        self.clock = clock
        self.close_reply_wait = close_reply_wait
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            # the handler already did the HTTP side: no Host / Origin checks here
            requireMaskedClientFrames=True,
            failByDrop=False,  # bad input gets a close frame with its code (1009, 1007...)
        )

    def render(self, fmt: Format) -> Any:
        """The router's renderer for ``ws-message``: one PreparedMessage per item."""
        if fmt.action != "send" or fmt.fields.get("type") not in ("text", "binary"):
            return None
        return self.prepareMessage(fmt.content or b"", fmt.fields["type"] == "binary")
