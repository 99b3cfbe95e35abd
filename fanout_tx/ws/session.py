"""One WebSocket-over-HTTP session: client activity <-> ``POST`` round trips to the origin.

Requests go out one at a time, in order; client messages that arrive while one is in
flight are batched into the next. The origin's replies carry events for the client and,
with the ``grip`` extension, ``c:`` control messages that subscribe the session to
channels on the router (it is an ISubscriber taking ``ws-message``). The session knows
neither autobahn nor HTTP: it talks to a WsClient (the protocol adapter) and an Origin
(the HTTP poster), so its logic runs under task.Clock with fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from fanout_tx.formats import Format
from fanout_tx.interfaces import ISubscriber
from fanout_tx.items import Item
from fanout_tx.router import Router
from fanout_tx.ws import events as ev

EVENTS_TYPE = "application/websocket-events"
# As Pushpin: a Keep-Alive-Interval below 20 s acts as 20 s; at most ~200 KB per request.
MIN_KEEP_ALIVE_INTERVAL = 20
MAX_REQUEST_CONTENT = 200_000


class OriginError(Exception):
    """The origin could not be reached or answered something unusable."""


@dataclass(frozen=True)
class OriginReply:
    code: int
    reason: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for n, v in self.headers if n.lower() == lowered), None)

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for n, v in self.headers if n.lower() == lowered]

    def is_events(self) -> bool:
        content_type = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        return self.code == 200 and content_type == EVENTS_TYPE


class Origin(Protocol):
    """Posts one websocket-events body; fails with OriginError when unusable."""

    def post(self, body: bytes, meta: Mapping[str, str]) -> Deferred[OriginReply]: ...


class WsClient(Protocol):
    """What a session may do to its client connection (ws/protocol.py implements it)."""

    def send_message(self, payload: bytes, binary: bool) -> None: ...

    def send_prepared(self, prepared: Any) -> None: ...

    def send_ping(self, payload: bytes) -> None: ...

    def send_pong(self, payload: bytes) -> None: ...

    def close(self, code: int | None, reason: str) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class SessionOptions:
    """Per-route settings: ``one_event``, ``sub=`` channels, the ``prefix=`` for channels."""

    one_event: bool = False
    subscriptions: tuple[str, ...] = ()
    channel_prefix: str = ""
    max_subscriptions: int = 20


_HIDDEN_FROM_CLIENT = frozenset({
    "content-type", "content-length", "keep-alive-interval", "sec-websocket-extensions",
    "connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
    "sec-websocket-accept", "sec-websocket-protocol",
})


@dataclass
class Accepted:
    """The origin accepted the connection: what the client's 101 response carries."""

    subprotocol: str | None
    headers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Rejected:
    """The origin refused: relay its status, headers and body to the client."""

    code: int
    reason: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes


@implementer(ISubscriber)
class WsOverHttpSession:
    formats = ("ws-message",)
    _log = Logger()

    def __init__(
        self, origin: Origin, router: Router, clock: IReactorTime,
        options: SessionOptions = SessionOptions(),
        on_end: Callable[[WsOverHttpSession], None] | None = None,
    ) -> None:
        self._origin = origin
        self._router = router
        self._clock = clock
        self._options = options
        self._on_end = on_end
        self.meta: dict[str, str] = {}  # subscription meta (set-meta), read by filters
        self._http_meta: dict[str, str] = {}  # Set-Meta-* from the origin, sent as Meta-*
        self._client: WsClient | None = None
        self._pending: list[ev.Event] = []
        self._in_flight = False
        self._first_events: list[ev.Event] = []
        self._prefix: str | None = None  # grip message prefix; None = grip off
        self._keep_alive_interval = 0
        self._origin_timer: IDelayedCall | None = None
        self._client_keep_alive: ev.KeepAlive | None = None
        self._client_timer: IDelayedCall | None = None
        self._delayed: ev.SendDelayed | None = None
        self._delayed_timer: IDelayedCall | None = None
        self._detached = False
        self._final_sent = False  # CLOSE or DISCONNECT went (or goes) to the origin
        self._ended = False
        self.finished: Deferred[None] = Deferred()

    # -- opening ----------------------------------------------------------------------------

    def start(self) -> Deferred[Accepted | Rejected]:
        """Send OPEN; fires with Accepted or Rejected, or fails with OriginError."""
        self._in_flight = True
        d = self._origin.post(ev.encode_events([ev.Event("OPEN")]), self._http_meta)
        return d.addCallback(self._opened).addErrback(self._open_failed)

    def _opened(self, reply: OriginReply) -> Accepted | Rejected:
        self._in_flight = False
        if not reply.is_events():
            self._end()
            return Rejected(reply.code, reply.reason, reply.headers, reply.body)
        try:
            events = ev.decode_events(reply.body)
        except ev.EventsError as e:
            self._end()
            raise OriginError(f"malformed events in the OPEN reply: {e}") from None
        self._read_headers(reply)
        if events and events[0].name != "OPEN":
            self._end()
            raise OriginError("the origin's first reply must start with OPEN")
        if not events and not self._keep_alive_interval:
            self._end()
            raise OriginError("the origin's first reply has no OPEN")
        self._first_events = events[1:]
        self._prefix = ev.grip_message_prefix(reply.header_values("Sec-WebSocket-Extensions"))
        headers: dict[str, list[str]] = {}
        for name, value in reply.headers:
            lowered = name.lower()
            if lowered in _HIDDEN_FROM_CLIENT or lowered.startswith(("set-meta-", "grip-")):
                continue
            headers.setdefault(name, []).append(value)
        return Accepted(reply.header("Sec-WebSocket-Protocol"), headers)

    def _open_failed(self, failure: Failure) -> Failure:
        self._end()
        return failure

    def attach(self, client: WsClient) -> None:
        """The client's handshake is done: apply ``sub=``, then the first reply's events."""
        self._client = client
        for channel in self._options.subscriptions:
            self._apply_control(ev.Subscribe(channel))
        events, self._first_events = self._first_events, []
        self._handle_events(events)
        self._after_round_trip()

    # -- client activity --------------------------------------------------------------------

    def client_message(self, payload: bytes, binary: bool) -> None:
        self._queue(ev.Event("BINARY" if binary else "TEXT", payload))

    def client_ping(self, payload: bytes) -> None:
        self._queue(ev.Event("PING", payload or None))

    def client_pong(self, payload: bytes) -> None:
        self._queue(ev.Event("PONG", payload or None))

    def client_closed(self, code: int | None, reason: str) -> None:
        """Clean close from the client: CLOSE goes to the origin, then the session ends."""
        self._client = None
        self._finish_with(ev.Event("CLOSE", ev.close_content(code, reason)))

    def client_lost(self) -> None:
        """The client vanished without a close handshake: DISCONNECT."""
        self._client = None
        self._finish_with(ev.Event("DISCONNECT"))

    def _finish_with(self, event: ev.Event) -> None:
        self._stop_client_side()
        if self._final_sent or self._ended:
            self._end_when_idle()
            return
        self._final_sent = True
        self._pending.append(event)
        self._send_next()

    def _queue(self, event: ev.Event) -> None:
        if self._detached or self._final_sent or self._ended:
            return
        self._pending.append(event)
        self._send_next()

    # -- origin round trips -----------------------------------------------------------------

    def _send_next(self, keep_alive: bool = False) -> None:
        if self._in_flight or self._ended or not (self._pending or keep_alive):
            return
        self._cancel(self._origin_timer)
        self._origin_timer = None
        batch = self._take_batch()
        self._in_flight = True
        d = self._origin.post(ev.encode_events(batch), self._http_meta)
        d.addCallbacks(self._replied, self._request_failed)
        d.addErrback(self._internal_error)

    def _take_batch(self) -> list[ev.Event]:
        if self._options.one_event:
            return [self._pending.pop(0)] if self._pending else []
        batch: list[ev.Event] = []
        size = 0
        while self._pending and (not batch or size < MAX_REQUEST_CONTENT):
            event = self._pending.pop(0)
            size += len(event.content or b"")
            batch.append(event)
        return batch

    def _replied(self, reply: OriginReply) -> None:
        self._in_flight = False
        if not reply.is_events():
            self._fail(f"origin answered {reply.code} instead of {EVENTS_TYPE}")
            return
        try:
            events = ev.decode_events(reply.body)
        except ev.EventsError as e:
            self._fail(f"malformed events from the origin: {e}")
            return
        self._read_headers(reply)
        if self._client is not None:
            self._handle_events(events)
        self._after_round_trip()

    def _request_failed(self, failure: Failure) -> None:
        self._in_flight = False
        self._fail(f"origin request failed: {failure.getErrorMessage()}")

    def _internal_error(self, failure: Failure) -> None:
        self._log.failure("WebSocket-over-HTTP session error", failure)
        self._fail("internal error")

    def _after_round_trip(self) -> None:
        if self._ended:
            return
        if self._pending:
            self._send_next()
        elif self._final_sent or self._detached:
            self._end_when_idle()
        elif (self._client is not None and self._keep_alive_interval
              and self._origin_timer is None):
            self._origin_timer = self._clock.callLater(
                self._keep_alive_interval, self._origin_keep_alive
            )

    def _origin_keep_alive(self) -> None:
        self._origin_timer = None
        self._send_next(keep_alive=True)

    def _read_headers(self, reply: OriginReply) -> None:
        interval = reply.header("Keep-Alive-Interval")
        if interval is not None:
            try:
                seconds = int(interval)
            except ValueError:
                seconds = 0
            self._keep_alive_interval = max(seconds, MIN_KEEP_ALIVE_INTERVAL) if seconds > 0 else 0
        for name, value in reply.headers:
            if name.lower().startswith("set-meta-") and len(name) > 9:
                if value:
                    self._http_meta[name[9:]] = value
                else:
                    self._http_meta.pop(name[9:], None)

    def _handle_events(self, events: list[ev.Event]) -> None:
        for event in events:
            client = self._client
            if client is None:
                return
            name = event.name
            content = event.content or b""
            if name in ("TEXT", "BINARY"):
                self._from_origin(content, binary=name == "BINARY")
            elif name == "PING":
                client.send_ping(content)
            elif name == "PONG":
                client.send_pong(content)
            elif name == "CLOSE":
                # As Pushpin: the client's close reply goes back to the origin as CLOSE
                # (client_closed, reported by the protocol).
                code, reason = ev.parse_close(event.content)
                self._client = None
                client.close(code, reason)
                self._stop_client_side()
                return
            elif name == "DISCONNECT":
                self._final_sent = True
                self._client = None
                client.abort()
                self._stop_client_side()
                return
            elif name == "OPEN":
                self._fail("OPEN from the origin after the connection was open")
                return
            else:
                self._log.debug("ignored unknown event {name}", name=name)

    def _from_origin(self, content: bytes, binary: bool) -> None:
        if self._prefix is None:
            self._send_to_client(content, binary)
        elif not binary and content.startswith(b"c:"):
            try:
                message = ev.parse_control(content[2:])
            except ev.ControlError as e:
                # As Pushpin: a bad control message is dropped, the connection goes on.
                self._log.warn("ignored an invalid control message from the origin: {reason}",
                               reason=str(e))
                return
            self._apply_control(message)
        elif content.startswith(self._prefix.encode("utf-8")):
            self._send_to_client(content[len(self._prefix.encode("utf-8")) :], binary)
        else:
            # As Pushpin: with grip on, a message without the prefix is not for the client.
            self._log.debug("dropped an origin message without the grip prefix")

    def _send_to_client(self, content: bytes, binary: bool) -> None:
        if self._client is not None:
            self._client.send_message(content, binary)
            self._client_sent()

    # -- control messages -------------------------------------------------------------------

    def _apply_control(self, message: ev.ControlMessage) -> None:
        if isinstance(message, ev.Subscribe):
            channel = self._options.channel_prefix + message.channel
            channels = self._router.channels_of(self)
            if channel not in channels and len(channels) >= self._options.max_subscriptions:
                self._log.warn("subscription limit reached; not subscribing to {channel}",
                               channel=channel)
                return
            self._router.subscribe(channel, self, message.filters)
        elif isinstance(message, ev.Unsubscribe):
            self._router.unsubscribe(self._options.channel_prefix + message.channel, self)
        elif isinstance(message, ev.Detach):
            self._detach()
        elif isinstance(message, ev.SetMeta):
            if message.value:
                self.meta[message.name] = message.value
            else:
                self.meta.pop(message.name, None)
        elif isinstance(message, ev.KeepAlive):
            self._set_client_keep_alive(message)
        elif isinstance(message, ev.SendDelayed):
            self._flush_delayed()
            self._delayed = message
            self._delayed_timer = self._clock.callLater(message.timeout, self._flush_delayed)
        elif isinstance(message, ev.FlushDelayed):
            self._flush_delayed()
        # ev.Session: accepted; nothing to track.

    def _detach(self) -> None:
        """Keep the client and its subscriptions; stop talking to the origin (as Pushpin,
        which closes its side towards the origin)."""
        if self._detached:
            return
        self._detached = True
        self._cancel(self._origin_timer)
        self._origin_timer = None
        self._final_sent = True
        self._pending.append(ev.Event("CLOSE"))

    def _send_control_content(self, content: bytes, message_type: str) -> None:
        client = self._client
        if client is None:
            return
        if message_type == "ping":
            client.send_ping(content)
        elif message_type == "pong":
            client.send_pong(content)
        else:
            client.send_message(content, message_type == "binary")
        self._client_sent()

    def _flush_delayed(self) -> None:
        message, self._delayed = self._delayed, None
        self._cancel(self._delayed_timer)
        self._delayed_timer = None
        if message is not None:
            self._send_control_content(message.content, message.message_type)

    def _set_client_keep_alive(self, message: ev.KeepAlive) -> None:
        self._cancel(self._client_timer)
        self._client_timer = None
        if message.content is None or message.timeout <= 0:
            self._client_keep_alive = None
            return
        self._client_keep_alive = message
        self._client_timer = self._clock.callLater(message.timeout, self._client_keep_alive_due)

    def _client_keep_alive_due(self) -> None:
        message = self._client_keep_alive
        self._client_timer = None
        if message is None or message.content is None:
            return
        self._client_timer = self._clock.callLater(message.timeout, self._client_keep_alive_due)
        self._send_control_content(message.content, message.message_type)

    def _client_sent(self) -> None:
        """Something went to the client: an idle keep-alive starts over."""
        message = self._client_keep_alive
        if message is not None and message.mode == "idle" and self._client_timer is not None:
            self._client_timer.reset(message.timeout)

    # -- ISubscriber ------------------------------------------------------------------------

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        client = self._client
        if client is None:
            return
        if fmt.action == "close":
            self.close_client(fmt.fields.get("code"), fmt.fields.get("reason", ""))
            return
        message_type = fmt.fields.get("type", "text")
        if message_type == "ping":
            client.send_ping(fmt.content or b"")
        elif message_type == "pong":
            client.send_pong(fmt.content or b"")
        else:
            client.send_prepared(prepared)
        self._client_sent()

    def close(self, reason: str) -> None:
        self.close_client(1012 if reason == "shutdown" else 1011, reason)

    def recover(self) -> None:
        """Nothing is held for a WebSocket; a keep-alive round trip refreshes the origin."""
        if self._client is not None and not self._detached:
            self._send_next(keep_alive=True)

    def close_client(self, code: int | None, reason: str) -> None:
        """Close the client from the server side; its close reply, which the protocol
        reports through client_closed, goes to the origin as CLOSE."""
        if self._client is not None:
            self._client.close(code, reason)

    # -- ending -----------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """The origin side broke: close the client with 1011 and end."""
        self._log.warn("WebSocket-over-HTTP session failed: {reason}", reason=reason)
        client, self._client = self._client, None
        self._final_sent = True
        self._pending.clear()
        if client is not None:
            client.close(1011, reason[:120])
        self._stop_client_side()
        self._end()

    def _stop_client_side(self) -> None:
        self._cancel(self._client_timer)
        self._client_timer = None
        self._client_keep_alive = None
        self._cancel(self._delayed_timer)
        self._delayed_timer = None
        self._delayed = None
        if self._client is None:
            self._router.unsubscribe_all(self)

    def _end_when_idle(self) -> None:
        if self._client is None and not self._in_flight and not self._pending:
            self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel(self._origin_timer)
        self._origin_timer = None
        self._router.unsubscribe_all(self)
        if self._on_end is not None:
            self._on_end(self)
        self.finished.callback(None)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
