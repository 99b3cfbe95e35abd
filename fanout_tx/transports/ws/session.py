"""One WebSocket-over-HTTP session: client activity <-> ``POST`` round trips to the origin.

Requests go out one at a time, in order; client messages that arrive while one is in
flight are batched into the next. The origin's replies carry events for the client and,
with the ``grip`` extension, ``c:`` control messages that subscribe the session to
channels on the router (it is an ISubscriber taking ``ws-message``). The session knows
neither autobahn nor HTTP: it talks to a WsClient (the protocol adapter) and an EventsOrigin
(the HTTP poster), so its logic runs under task.Clock with fakes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from fanout_tx.core.router import Router
from fanout_tx.transports.ws import events as ev
from fanout_tx.transports.ws.grip import (
    DEFAULT_OPTIONS,
    Accepted,
    GripSession,
    Rejected,
    SessionOptions,
    WsClient,
    client_headers,
)

EVENTS_TYPE = "application/websocket-events"
# As Pushpin: a Keep-Alive-Interval below 20 s acts as 20 s; at most ~200 KB per request.
MIN_KEEP_ALIVE_INTERVAL = 20
MAX_REQUEST_CONTENT = 200_000
# Client data waiting for the origin past this many bytes pauses reading from the client.
MAX_PENDING = 1_000_000


def _encoded_size(event: ev.Event) -> int:
    """An event's size in a request body, its framing included, so that empty messages
    (6 bytes each from a client) count too: counting content only let them queue and
    batch without bound."""
    if event.content is None:
        return len(event.name) + 2
    size = len(event.content)
    return len(event.name) + len(f"{size:x}") + 5 + size


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


class EventsOrigin(Protocol):
    """Posts one websocket-events body; fails with OriginError when unusable."""

    def post(self, body: bytes, meta: Mapping[str, str]) -> Deferred[OriginReply]: ...


class WsOverHttpSession(GripSession):
    """One client WebSocket whose origin speaks application/websocket-events."""

    def __init__(
        self, origin: EventsOrigin, router: Router, clock: IReactorTime,
        options: SessionOptions = DEFAULT_OPTIONS,
        on_end: Callable[[WsOverHttpSession], None] | None = None,
    ) -> None:
        super().__init__(router, clock, options, on_end)
        self._origin = origin
        self._http_meta: dict[str, str] = {}  # Set-Meta-* from the origin, sent as Meta-*
        self._pending: deque[ev.Event] = deque()
        self._pending_bytes = 0
        self._reading_paused = False
        self._in_flight = False
        self._first_events: list[ev.Event] = []
        self._keep_alive_interval = 0
        self._origin_timer: IDelayedCall | None = None
        self._final_sent = False  # CLOSE or DISCONNECT went (or goes) to the origin
        # The client's close (code, reason) while its reply waits for the origin's CLOSE.
        self._client_close: tuple[int | None, str] | None = None

    # -- opening ----------------------------------------------------------------------------

    def start(self) -> Deferred[Accepted | Rejected]:
        """Send OPEN; fires with Accepted or Rejected, or fails with OriginError."""
        d: Deferred[Accepted | Rejected] = self._post([ev.Event("OPEN")]).addCallback(self._opened)
        d.addErrback(self._open_failed)
        return d

    def _post(self, events: list[ev.Event]) -> Deferred[OriginReply]:
        """One round trip; an OriginError after ``request_timeout`` seconds unanswered."""
        self._in_flight = True
        d = self._origin.post(ev.encode_events(events), self._http_meta)
        timeout = self._options.request_timeout
        timer = self._clock.callLater(timeout, d.cancel)

        def done(result: Any) -> Any:
            self._in_flight = False
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure):  # cancelled by the timer
                return Failure(OriginError(f"no answer within {timeout} s"))
            return result

        return d.addBoth(done)

    def _opened(self, reply: OriginReply) -> Accepted | Rejected:
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
        self._take_extension(reply.header_values("Sec-WebSocket-Extensions"))
        return Accepted(reply.header("Sec-WebSocket-Protocol"), client_headers(reply.headers))

    def _open_failed(self, failure: Failure) -> Failure:
        self._end()
        return failure

    def attach(self, client: WsClient) -> None:
        """The client's handshake is done: apply ``sub=``, then the first reply's events."""
        self._attach_client(client)
        events, self._first_events = self._first_events, []
        try:
            self._handle_events(events)
        except Exception:  # as for later replies (_internal_error): 1011, not a stuck client
            self._internal_error(Failure())
            return
        self._after_round_trip()

    # -- client activity --------------------------------------------------------------------

    def client_message(self, payload: bytes, binary: bool) -> None:
        self._queue(ev.Event("BINARY" if binary else "TEXT", payload))

    def client_ping(self, payload: bytes) -> None:
        self._queue(ev.Event("PING", payload or None))

    def client_pong(self, payload: bytes) -> None:
        self._queue(ev.Event("PONG", payload or None))

    def client_closing(self, code: int | None, reason: str) -> None:
        """The client sent its close frame: CLOSE goes to the origin, and the CLOSE it
        answers is the client's close reply (as Pushpin); an answer without one, or a
        failed request, replies with the client's own code."""
        if self._final_sent or self._ended:
            self._close_client_as_asked(code, reason)
            return
        self._client_close = (code, reason)
        self._router.unsubscribe_all(self)
        self._final_sent = True
        self._append(ev.Event("CLOSE", ev.close_content(code, reason)))
        self._send_next()

    def _close_client_as_asked(self, code: int | None, reason: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close(code, reason)

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
        self._append(event)
        self._send_next()

    def _append(self, event: ev.Event) -> None:
        self._pending.append(event)
        self._pending_bytes += _encoded_size(event)

    def _queue(self, event: ev.Event) -> None:
        if self._detached or self._final_sent or self._ended:
            return
        self._append(event)
        if self._pending_bytes > MAX_PENDING and self._client and not self._reading_paused:
            # The origin is slower than the client: stop reading the client for now.
            self._reading_paused = True
            self._client.pause_reading()
        self._send_next()

    # -- origin round trips -----------------------------------------------------------------

    def _send_next(self, keep_alive: bool = False) -> None:
        if self._in_flight or self._ended or not (self._pending or keep_alive):
            return
        self._cancel(self._origin_timer)
        self._origin_timer = None
        batch = self._take_batch()
        d = self._post(batch)
        d.addCallbacks(self._replied, self._request_failed)
        d.addErrback(self._internal_error)

    def _take_batch(self) -> list[ev.Event]:
        batch: list[ev.Event] = []
        size = 0
        while self._pending and (not batch or size < MAX_REQUEST_CONTENT):
            if self._options.one_event and batch:
                break
            event = self._pending.popleft()
            size += _encoded_size(event)
            batch.append(event)
        self._pending_bytes -= size
        if self._reading_paused and self._pending_bytes <= MAX_PENDING and self._client:
            self._reading_paused = False
            self._client.resume_reading()
        return batch

    def _replied(self, reply: OriginReply) -> None:
        if self._detached:
            # As Pushpin: once detached, what the origin answers (its CLOSE, an error) is
            # read and dropped; the client keeps its connection.
            self._log.debug("ignored the origin's answer after detach ({code})",
                            code=reply.code)
            self._after_round_trip()
            return
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
        if self._detached:
            self._log.debug("origin request after detach failed: {reason}",
                            reason=failure.getErrorMessage())
            self._after_round_trip()
            return
        self._fail(f"origin request failed: {failure.getErrorMessage()}")

    def _internal_error(self, failure: Failure) -> None:
        self._log.failure("WebSocket-over-HTTP session error", failure)
        self._fail("internal error")

    def _after_round_trip(self) -> None:
        if self._ended:
            return
        if self._client_close is not None and not self._pending:
            self._close_client_as_asked(*self._client_close)  # the origin sent no CLOSE
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
            if client is None or self._detached:
                return  # detached: the rest of the origin's answer is not for the client
            name = event.name
            content = event.content or b""
            if name == "TEXT" and not ev.is_utf8(content):
                # A text frame that is not UTF-8 makes the client fail the connection
                # (1007): the message is dropped instead, the connection goes on.
                self._log.warn("dropped a TEXT event from the origin that is not UTF-8 "
                               "({size} bytes)", size=len(content))
            elif name in ("TEXT", "BINARY"):
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

    def _detach(self) -> None:
        """Keep the client and its subscriptions; stop talking to the origin (as Pushpin,
        which closes its side towards the origin)."""
        if self._detached:
            return
        self._detached = True
        self._cancel(self._origin_timer)
        self._origin_timer = None
        self._final_sent = True
        self._append(ev.Event("CLOSE"))

    def recover(self) -> None:
        """Nothing is held for a WebSocket; a keep-alive round trip refreshes the origin."""
        if self._client is not None and not self._detached:
            self._send_next(keep_alive=True)

    # -- ending -----------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """The origin side broke: close the client with 1011 and end."""
        self._log.warn("WebSocket-over-HTTP session failed: {reason}", reason=reason)
        client, self._client = self._client, None
        self._final_sent = True
        self._pending.clear()
        self._pending_bytes = 0
        if client is not None and self._client_close is not None:
            client.close(*self._client_close)  # the client asked to close: its code back
        elif client is not None:
            client.close(1011, reason[:120])
        self._stop_client_side()
        self._end()

    def _end_when_idle(self) -> None:
        if self._client is None and not self._in_flight and not self._pending:
            self._end()

    def _end(self) -> None:
        self._cancel(self._origin_timer)
        self._origin_timer = None
        super()._end()

