"""What WebSocket-over-HTTP and plain WebSocket proxying share: the GRIP side of a client
connection.

A GripSession is the ISubscriber for one client WebSocket (format ``ws-message``). It
filters what the origin sends (the ``grip`` extension: ``c:`` control messages, the message
prefix), applies control messages (subscribe, unsubscribe, set-meta, keep-alive,
send-delayed, flush-delayed, detach) and delivers published messages. Subclasses talk to
the origin: over HTTP (session.py) or over a WebSocket (proxy.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.core.replay import Replay
from fanout_tx.core.router import Router
from fanout_tx.transports.ws import events as ev


class ClientSession(Protocol):
    """What a client connection and the handler ask of its session (WsOverHttpSession in
    session.py, WsProxySession in proxy.py)."""

    finished: Deferred[None]

    def start(self) -> Deferred[Accepted | Rejected]: ...

    def attach(self, client: WsClient) -> None: ...

    def client_message(self, payload: bytes, binary: bool) -> None: ...

    def client_ping(self, payload: bytes) -> None: ...

    def client_pong(self, payload: bytes) -> None: ...

    def client_closing(self, code: int | None, reason: str) -> None: ...

    def client_closed(self, code: int | None, reason: str) -> None: ...

    def client_lost(self) -> None: ...

    def close_client(self, code: int | None, reason: str) -> None: ...


class WsClient(Protocol):
    """What a session may do to its client connection (transports/ws/protocol.py implements it)."""

    def send_message(self, payload: bytes, binary: bool) -> None: ...

    def send_prepared(self, prepared: Any) -> None: ...

    def send_ping(self, payload: bytes) -> None: ...

    def send_pong(self, payload: bytes) -> None: ...

    def close(self, code: int | None, reason: str) -> None: ...

    def abort(self) -> None: ...

    def follow_writes(self, producer: IPushProducer) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@dataclass(frozen=True)
class SessionOptions:
    """Per-route settings: ``one_event``, ``sub=`` channels, the ``prefix=`` for channels,
    and the limits from the proxy settings."""

    one_event: bool = False
    subscriptions: tuple[str, ...] = ()
    channel_prefix: str = ""
    max_subscriptions: int = 20
    request_timeout: float = 600.0  # WebSocket-over-HTTP round trip, as the proxy's


DEFAULT_OPTIONS = SessionOptions()

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


def client_headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The origin's handshake answer headers that the client's 101 may carry."""
    result: dict[str, list[str]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _HIDDEN_FROM_CLIENT or lowered.startswith(("set-meta-", "grip-")):
            continue
        result.setdefault(name, []).append(value)
    return result


@implementer(ISubscriber)
class GripSession:
    """Client-side state and GRIP logic; subclasses implement the origin side
    (``_detach``, ``recover``) and call ``_end`` when everything is over."""

    formats = ("ws-message",)
    _log = Logger()

    def __init__(
        self, router: Router, clock: IReactorTime, options: SessionOptions = DEFAULT_OPTIONS,
        on_end: Callable[[Any], None] | None = None,
    ) -> None:
        self._router = router
        self._clock = clock
        self._options = options
        self._on_end = on_end
        self.meta: dict[str, str] = {}  # subscription meta (set-meta), read by filters
        self._client: WsClient | None = None
        self._prefix: str | None = None  # grip message prefix; None = grip off
        # [history]: the grip extension's history-id-prefix (None: ids are not sent), and
        # live items waiting while a subscribe's since/rewind replay is looked up.
        self._id_prefix: str | None = None
        self._history_on = router.history is not None
        self._replay = Replay(self.formats)
        self._client_keep_alive: ev.KeepAlive | None = None
        self._client_timer: IDelayedCall | None = None
        self._delayed: ev.SendDelayed | None = None
        self._delayed_timer: IDelayedCall | None = None
        self._detached = False
        self._ended = False
        self.finished: Deferred[None] = Deferred()

    def _attach_client(self, client: WsClient) -> None:
        """The client's handshake is done: apply the route's ``sub=`` channels."""
        self._client = client
        for channel in self._options.subscriptions:
            self._apply_control(ev.Subscribe(channel))

    def _take_extension(self, extension_headers: list[str]) -> None:
        """The origin's ``Sec-WebSocket-Extensions``: grip on or off, its parameters."""
        self._prefix = ev.grip_message_prefix(extension_headers)
        if self._prefix is not None and self._router.history is not None:
            self._id_prefix = ev.grip_history_id_prefix(extension_headers)

    def _detach(self) -> None:
        """Stop talking to the origin; keep the client and its subscriptions."""
        raise NotImplementedError

    def recover(self) -> None:
        """Nothing is held for a WebSocket; subclasses may refresh the origin."""

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

    def _apply_control(self, message: ev.ControlMessage) -> None:
        if isinstance(message, ev.Subscribe):
            channel = self._options.channel_prefix + message.channel
            channels = self._router.channels_of(self)
            if channel not in channels and len(channels) >= self._options.max_subscriptions:
                self._log.warn("subscription limit reached; not subscribing to {channel}",
                               channel=channel)
                return
            self._router.subscribe(channel, self, message.filters)
            self._replay.start(self._router.history, channel, message.since, message.rewind,
                               self._send_replayed)
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

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        """One published message to the client (``prepared`` None: replayed from history).
        With [history] off this is the whole fan-out path: one flag read more than before."""
        client = self._client
        if client is None:
            return
        if self._history_on and self._replay.waiting is not None:
            self._replay.waiting.append((item, fmt, prepared))  # a since/rewind is looked up
            return
        if fmt.action == "close":
            self.close_client(fmt.fields.get("code"), fmt.fields.get("reason", ""))
            return
        if fmt.action == "hint":
            return
        message_type = fmt.fields.get("type", "text")
        if self._history_on and self._id_prefix is not None and item.id is not None:
            client.send_message((self._id_prefix + item.id).encode("utf-8"), False)
        if message_type == "ping":
            client.send_ping(fmt.content or b"")
        elif message_type == "pong":
            client.send_pong(fmt.content or b"")
        elif prepared is None:
            client.send_message(fmt.content or b"", message_type == "binary")
        else:
            client.send_prepared(prepared)
        self._client_sent()

    def _send_replayed(self, item: Item, fmt: Format, prepared: Any) -> None:
        """Replay's way in: past the wait that holds live items back."""
        replay = self._replay
        waiting, replay.waiting = replay.waiting, None
        try:
            self.deliver(item, fmt, prepared)
        finally:
            replay.waiting = waiting

    def close(self, reason: str) -> None:
        """ISubscriber: the server ends the subscription (1012 on shutdown, else 1011)."""
        self.close_client(1012 if reason == "shutdown" else 1011, reason)

    def close_client(self, code: int | None, reason: str) -> None:
        """Close the client from the server side; its close reply, which the protocol
        reports through client_closed, goes to the origin as CLOSE."""
        if self._client is not None:
            self._client.close(code, reason)

    def _stop_client_side(self) -> None:
        self._cancel(self._client_timer)
        self._client_timer = None
        self._client_keep_alive = None
        self._cancel(self._delayed_timer)
        self._delayed_timer = None
        self._delayed = None
        if self._client is None:
            self._router.unsubscribe_all(self)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _end(self) -> None:
        """Everything is over: no subscriptions, no timers; ``finished`` fires."""
        if self._ended:
            return
        self._ended = True
        self._client = None
        self._stop_client_side()
        if self._on_end is not None:
            self._on_end(self)
        self.finished.callback(None)
