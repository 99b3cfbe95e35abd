"""Held HTTP requests as router subscribers: HeldResponse (long-poll) and HeldStream.

Each hold owns its timers and its subscriptions, and has exactly one exit (``_end``) that
cancels every timer and unsubscribes everything; the client going away, a publish, a timeout
and a shutdown all go through it. The publish renderers below run once per item; per
subscriber there is only a header merge (long-poll) or one write (stream).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._twisted import send_directly
from fanout_tx.core.formats import Format
from fanout_tx.core.headers import Header
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router
from fanout_tx.grip.content_filters import filter_response_body
from fanout_tx.grip.directives import FilterError
from fanout_tx.grip.instruct import GripError, GripKeepAlive, Instruct, Link
from fanout_tx.transports.responses import set_status_and_headers, write_response
from fanout_tx.transports.write_batch import WriteBatch
from fanout_tx.transports.write_budget import WriteBudget

# Bytes a stream may queue for a client that does not read, beyond the transport's own
# buffer, before the client is dropped.
DEFAULT_MAX_CLIENT_BUFFER = 1_000_000


# --- once-per-item renderers -----------------------------------------------------------------


@dataclass(frozen=True)
class PreparedResponse:
    """An ``http-response`` item, ready to merge into any held response."""

    code: int
    reason: str | None
    headers: tuple[Header, ...]
    names: frozenset[str]
    body: bytes


def render_http_response(fmt: Format) -> PreparedResponse:
    headers = tuple(fmt.fields.get("headers", ()))
    return PreparedResponse(
        fmt.fields.get("code") or 200, fmt.fields.get("reason"), headers,
        frozenset(n.lower() for n, _v in headers), fmt.content or b"",
    )


@dataclass(frozen=True)
class PreparedChunk:
    """An ``http-stream`` item: the content and its HTTP/1.1 chunk framing, built once."""

    content: bytes
    chunk: bytes


# What a stream queues for an item a filter kept from it (HeldStream.skipped).
_SKIPPED = PreparedChunk(b"", b"")


def render_http_stream(fmt: Format) -> PreparedChunk | None:
    if not fmt.content:
        return None
    return PreparedChunk(fmt.content, b"%x\r\n%b\r\n" % (len(fmt.content), fmt.content))


def register_renderers(router: Router) -> None:
    router.add_renderer("http-response", render_http_response)
    router.add_renderer("http-stream", render_http_stream)


class HoldOwner(Protocol):
    """What a hold needs from the proxy session that created it."""

    def retry(self, grip_last: Sequence[Header] = ()) -> None:
        """Re-request the origin; its new answer is what the client gets."""

    def fetch_link(self, link: Link, grip_last: Sequence[Header]) -> Deferred[Instruct]:
        """GET a ``Grip-Link`` URL; fires with its answer as an Instruct (hold or not)."""

    def channel_name(self, name: str) -> str:
        """A Grip-Channel name as the router knows it (route prefix applied)."""


def send_now(transport: object, data: bytes) -> bytes:
    """Hand ``data`` to the kernel at once when nothing is queued ahead of it on a plain
    TCP (or UNIX) connection; returns what is left for the transport's own buffer.

    ``transport.write`` only queues, registers the socket for writability (one
    ``epoll_ctl``), and sends on the next turn, then unregisters it (another): two syscalls
    per flush on top of the ``send``, an eighth of the channels scenario. Anything else (TLS,
    HTTP/2, a test transport, data already queued, a closing connection) keeps the
    ordinary path, so bytes and their order are the same either way."""
    return send_directly(transport, data)


# --- the common part ---------------------------------------------------------------------------


def abort(request: Request) -> None:
    """Drop the client's connection now (its ``client_maxconn`` slot goes with it)."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is not None:
        transport.abortConnection()


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _answering(method: _Method) -> _Method:
    """For each way into a hold that may write to its request (start, publish, timers,
    flush, close, a link's answer): an exception there would leave the client without an
    answer and its slot taken, for good. Log it, end the hold and abort the connection."""

    @functools.wraps(method)
    def guarded(self: _Hold, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            self._answer_failed()
            return None

    return guarded  # type: ignore[return-value]


# --- built-in history (docs/reliability.rst) --------------------------------------------------

# The most items one replay takes from history ([history] max_items bounds it anyway).
REPLAY_LIMIT = 100_000
# The longest Last-Event-ID read (a channel name's limit); a longer one is ignored.
MAX_RESUME_ID = 1024

Replayed = list[Item] | None


def last_event_id(request: Request) -> str | None:
    """The id an SSE client reconnects with (``Last-Event-ID``), if usable."""
    raw = request.getHeader(b"last-event-id")
    if not raw or len(raw) > MAX_RESUME_ID:
        return None
    try:
        return raw.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


class _Hold:
    """Subscriptions, timers and the single exit shared by both kinds of hold (each an
    ISubscriber)."""

    formats: tuple[str, ...] = ()
    _log = Logger()

    def __init__(self, request: Request, router: Router, clock: IReactorTime,
                 instruct: Instruct, origin: HoldOwner) -> None:
        self.request = request
        self.router = router
        self.clock = clock
        self.instruct = instruct
        self.origin = origin
        self.meta = dict(instruct.meta)
        self.ended = False
        self._history = router.history  # [history]: None when off
        self._timers: dict[str, IDelayedCall] = {}
        # router channel -> the last id known on it: the prev-id, then each item's id
        # (only on channels that had a prev-id, as Pushpin)
        self._last_ids: dict[str, str | None] = {}

    def _subscribe(self, instruct: Instruct) -> None:
        self._last_ids = {}
        for channel in instruct.channels:
            name = self.origin.channel_name(channel.name)
            self._last_ids[name] = channel.prev_id
            self.router.subscribe(name, ISubscriber(self), channel.filters)

    def prev_ids(self, item: Item) -> dict[str, str | None]:
        """``build-id``'s context, read by the router: per channel, as the origin named it,
        the last id known, with ``item`` counted as received (Pushpin 1.36 advances the
        prev-id before it renders the content)."""
        ids = {}
        for channel in self.instruct.channels:
            name = self.origin.channel_name(channel.name)
            last = self._last_ids.get(name)
            if last is not None and name == item.channel and item.id is not None:
                last = item.id
            ids[channel.name] = last
        return ids

    def _out_of_sequence(self, item: Item) -> bool:
        """As Pushpin: on a channel held with a prev-id, an item whose prev-id is not the
        last id known does not follow the hold, a missing prev-id included."""
        expected = self._last_ids.get(item.channel)
        return expected is not None and item.prev_id != expected

    def _advance(self, item: Item) -> None:
        if item.id is not None and self._last_ids.get(item.channel) is not None:
            self._last_ids[item.channel] = item.id

    def _grip_last(self) -> list[Header]:
        """``Grip-Last`` for each channel with a known last id, for the origin to resume."""
        return [
            ("Grip-Last", f"{c.name}; last-id={last}")
            for c in self.instruct.channels
            if (last := self._last_ids.get(self.origin.channel_name(c.name))) is not None
        ]

    def _start(self) -> None:
        self.request.notifyFinish().addBoth(self._client_gone)
        self._subscribe(self.instruct)

    def _history_lookups(self, client_id: str | None) -> Deferred[list[Replayed]] | None:
        """With [history] on: per channel, what the client missed, from the first of its
        ``history-rewind`` (the newest N), ``history-since``, ``prev-id`` or ``client_id``
        (Last-Event-ID) that applies; a channel whose last id is that id missed nothing. Fires
        with one list per channel looked up (None: the id is older than history, or history
        could not be read); None when nothing is to be looked up (history off included)."""
        history = self._history
        if history is None:
            return None
        lookups: list[Deferred[Replayed]] = []
        for channel in self.instruct.channels:
            name = self.origin.channel_name(channel.name)
            if channel.history_rewind:
                lookups.append(history.last(name, channel.history_rewind).addCallback(list))
                continue
            since = channel.history_since or channel.prev_id or client_id
            last = self.router.last_id(name)
            if since is not None and last is not None and last != since:
                lookups.append(history.since(name, since, REPLAY_LIMIT))
        if not lookups:
            return None
        return gatherResults([d.addErrback(self._history_failed) for d in lookups])

    def _history_failed(self, failure: Failure) -> None:
        """History unreadable (Redis away): as if the id were older than it."""
        self._log.warn("history lookup failed, falling back: {error}",
                       error=failure.getErrorMessage())

    def _client_gone(self, _result: object) -> None:
        self._end()

    def _set_timer(self, name: str, delay: float, call: Callable[[], None]) -> None:
        self._cancel_timer(name)
        self._timers[name] = self.clock.callLater(delay, self._fire_timer, name, call)

    @_answering
    def _fire_timer(self, name: str, call: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        call()

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _end(self) -> bool:
        """Unsubscribe and cancel every timer; False when already ended."""
        if self.ended:
            return False
        self.ended = True
        self.router.unsubscribe_all(ISubscriber(self))
        for name in list(self._timers):
            self._cancel_timer(name)
        return True

    def _answer_failed(self) -> None:
        """An exception while answering: log it, end the hold, abort the connection."""
        self._log.failure("answering a held request failed; its connection is aborted")
        self._end()
        abort(self.request)


# --- long-poll ---------------------------------------------------------------------------------


@implementer(ISubscriber)
class HeldResponse(_Hold):
    """A long-poll: the first published ``http-response`` completes it; on timeout the
    client gets the origin's own response (with ``Grip-Status`` applied)."""

    formats = ("http-response",)

    @_answering
    def start(self, behind: Sequence[Header] = ()) -> None:
        """Hold; with [history] on, a poll whose ``prev-id`` (or ``history-since``) is
        behind is answered at once with the next item from history. ``behind``: the
        ``Grip-Last`` of channels whose ``prev-id`` is behind, for the origin to be asked
        with when history cannot answer (as Pushpin asks at once without history)."""
        self._start()
        self._set_timer("timeout", self.instruct.timeout, self._timed_out)
        self._log.debug("long-poll held on {channels} for {timeout}s",
                        channels=[c.name for c in self.instruct.channels],
                        timeout=self.instruct.timeout)
        lookups = self._history_lookups(None)
        if lookups is not None:
            lookups.addCallback(self._from_history, behind)
        elif behind:
            self._ask_origin(behind)

    @_answering
    def _from_history(self, found: list[Replayed], behind: Sequence[Header]) -> None:
        if self.ended:
            return
        for items in found:
            for item in items or ():
                fmt = item.formats.get("http-response")
                if fmt is not None and fmt.action == "send":
                    self._answer(render_http_response(fmt))
                    return
        if behind:
            self._ask_origin(behind)

    def _ask_origin(self, grip_last: Sequence[Header]) -> None:
        if self._end():
            self.origin.retry(grip_last)

    def _timed_out(self) -> None:
        if self._end():
            held = self.instruct.response
            write_response(self.request, held.code, held.reason, held.headers, held.body)

    @_answering
    def deliver(self, item: Item, fmt: Format, prepared: PreparedResponse) -> None:
        if self.ended:
            return
        if fmt.action == "hint" or self._out_of_sequence(item):
            self.recover()
            return
        self._answer(prepared)

    def _answer(self, prepared: PreparedResponse) -> None:
        self._end()
        held = self.instruct.response.headers
        headers = [(n, v) for n, v in held if n.lower() not in prepared.names]
        headers.extend(prepared.headers)
        write_response(self.request, prepared.code, prepared.reason, headers, prepared.body)

    def skipped(self, item: Item, fmt: Format) -> None:
        """A filter kept ``item`` from this poll: it still moves the channel's last id."""
        if self.ended:
            return
        if self._out_of_sequence(item):
            self.recover()
        else:
            self._advance(item)

    @_answering
    def close(self, reason: str) -> None:
        """Server shutdown: answer as on a timeout, so the client simply polls again."""
        self._timed_out()

    @_answering
    def recover(self) -> None:
        """Ask the origin again, saying where the client is (``Grip-Last``, as Pushpin)."""
        if self._end():
            self.origin.retry(self._grip_last())


# --- stream ------------------------------------------------------------------------------------


@implementer(ISubscriber, IPushProducer)
class HeldStream(_Hold):
    """A stream: initial response at once, then every published ``http-stream`` content.

    Registered as the request's push producer, so it knows when the client stops reading;
    past ``max_buffer`` queued bytes while paused the client is dropped. With a
    ``Grip-Link rel=next`` it recovers on a gap or after the link's idle timeout: items
    arriving during the fetch are queued and spliced after the origin's answer, so each
    reaches the client once.
    """

    formats = ("http-stream",)

    def __init__(self, request: Request, router: Router, clock: IReactorTime,
                 instruct: Instruct, origin: HoldOwner,
                 max_buffer: int = DEFAULT_MAX_CLIENT_BUFFER,
                 batch: WriteBatch | None = None, budget: WriteBudget | None = None) -> None:
        super().__init__(request, router, clock, instruct, origin)
        self.max_buffer = max_buffer
        self._batch = batch or WriteBatch(clock)
        self._budget = budget  # the server-wide cap on bytes queued for slow clients
        self._out: list[bytes] = []
        self._framed = False  # chunked response: queue wire bytes, written as they are
        self._finishing = False
        self._paused = False
        self._queued_while_paused = 0
        self._last_write = 0.0
        self._last_item = 0.0
        self._recovering: list[tuple[Item, Format, PreparedChunk | None]] | None = None

    @_answering
    def start(self, send_head: bool = True) -> None:
        """Send the origin's response head and body (unless continuing a response that
        already started, as after a Grip-Link), subscribe, and start the timers. A body
        the ``build-id`` filter rejects ends the response there (as Pushpin)."""
        response = self.instruct.response
        if send_head:
            set_status_and_headers(self.request, response.code, response.reason,
                                   response.headers)
        body = self._filtered_body(self.instruct)
        if body is None:
            self.ended = True
            self.request.finish()
            return
        self.request.registerProducer(self, True)
        self._start()
        self._adopt(self.instruct)
        self.request.write(body)  # also sends the head when the body is empty
        self._framed = bool(self.request.chunked) and self.request.method != b"HEAD"
        lookups = self._history_lookups(last_event_id(self.request))
        if lookups is not None:
            self._recovering = []  # live items wait behind the replay
            lookups.addCallback(self._replayed)

    def _filtered_body(self, instruct: Instruct) -> bytes | None:
        """The origin's body after its channels' ``ResponseContent`` filters; None (logged)
        on a filter error."""
        filters = {name for channel in instruct.channels for name in channel.filters}
        try:
            return filter_response_body(instruct.response.body, filters, instruct.meta)
        except FilterError as e:
            self._log.warn("stream ended: filter error in the origin's body: {reason}",
                           reason=str(e))
            return None

    def _adopt(self, instruct: Instruct) -> None:
        """Take the (possibly fresh) instruction's meta and timers (its channels and last
        ids are taken by ``_subscribe``)."""
        self.instruct = instruct
        self.meta = dict(instruct.meta)
        self._restart_keep_alive(force=True)
        self._restart_link_timer()

    # -- writing ------------------------------------------------------------------------

    def _write(self, data: bytes, chunk: bytes | None = None) -> None:
        """Queue ``data`` (``chunk``: its framing, built once per item by the renderer)
        for this turn's flush."""
        if self.ended or not data:
            return
        if self._paused:
            self._queued_while_paused += len(data)
            if self._budget is not None:
                self._budget.add(self, len(data))
            if self._queued_while_paused > self.max_buffer:
                self._log.warn("dropping a stream client that does not read ({size} bytes "
                               "queued)", size=self._queued_while_paused)
                self.drop_slow()
                return
        out = self._out
        if not out:
            self._batch.add(self)
        if not self._framed:
            out.append(data)
        elif chunk is not None:
            out.append(chunk)
        else:
            out.append(b"%x\r\n%b\r\n" % (len(data), data))
        self._restart_keep_alive(force=False)

    @_answering
    def flush(self) -> None:
        """Write everything queued since the last flush in one transport write."""
        out = self._out
        if not out:
            return
        self._out = []
        if self.ended and not self._finishing:
            return  # the client is gone or was dropped: nothing to send it
        data = b"".join(out)
        if self._framed:
            rest = send_now(self.request.channel.transport, data)
            if rest:
                self.request.channel.write(rest)
        else:
            self.request.write(data)

    # Idle timers are not re-armed on every write (that would be a cancel + callLater per
    # item per subscriber): a write only notes the time, and the timer, when it fires,
    # sleeps again for whatever is left.

    def _restart_keep_alive(self, force: bool) -> None:
        keep_alive: GripKeepAlive | None = self.instruct.keep_alive
        if keep_alive is None:
            return
        if force:
            self._last_write = self.clock.seconds()
            self._set_timer("keep-alive", keep_alive.timeout, self._keep_alive_due)
        elif keep_alive.mode == "idle":
            self._last_write = self.clock.seconds()

    def _keep_alive_due(self) -> None:
        keep_alive = self.instruct.keep_alive
        assert keep_alive is not None
        idle = self.clock.seconds() - self._last_write
        if keep_alive.mode == "idle" and idle < keep_alive.timeout:
            self._set_timer("keep-alive", keep_alive.timeout - idle, self._keep_alive_due)
            return
        self._write(keep_alive.data)
        self._restart_keep_alive(force=True)

    def _restart_link_timer(self, force: bool = True) -> None:
        link = self.instruct.next_link
        if link is None:
            return
        self._last_item = self.clock.seconds()
        if force:
            self._set_timer("link", link.timeout, self._link_due)

    def _link_due(self) -> None:
        link = self.instruct.next_link
        assert link is not None
        idle = self.clock.seconds() - self._last_item
        if idle < link.timeout:
            self._set_timer("link", link.timeout - idle, self._link_due)
            return
        self.recover()

    # -- publishing ---------------------------------------------------------------------

    def deliver(self, item: Item, fmt: Format, prepared: PreparedChunk | None) -> None:
        # _answering's guard, inline: the hot path (one call per subscriber per item) pays
        # for no wrapper call, and a try costs nothing until something raises.
        try:
            if self.ended:
                return
            if self._recovering is not None:
                self._recovering.append((item, fmt, prepared))
                return
            if fmt.action == "hint" and prepared is not _SKIPPED:
                self.recover()
                return
            if ((self.instruct.next_link is not None or self._history is not None)
                    and self._out_of_sequence(item)):
                self._log.info("gap on {channel}: got prev-id {prev}, expected {expected}; "
                               "recovering", channel=item.channel, prev=item.prev_id,
                               expected=self._last_ids.get(item.channel))
                if self._history is not None:
                    self._fill_gap([(item, fmt, prepared)])
                else:
                    self._begin_recovery([(item, fmt, prepared)])
                return
            self._apply(item, fmt, prepared)
        except Exception:
            self._answer_failed()

    def skipped(self, item: Item, fmt: Format) -> None:
        """A filter kept ``item`` from this stream: sequenced like any item (a gap still
        recovers), it moves the channel's last id and writes nothing."""
        self.deliver(item, fmt, _SKIPPED)

    def _apply(self, item: Item, fmt: Format, prepared: PreparedChunk | None) -> None:
        self._advance(item)
        if prepared is _SKIPPED:
            return
        if fmt.action == "close":
            self._finish()
            return
        if prepared is not None:
            self._write(prepared.content, prepared.chunk)
        self._restart_link_timer(force=False)

    def drop_slow(self) -> None:
        """Close a client that does not read (over its own buffer, or the server's
        ``max_buffered_bytes``: transports/write_budget.py)."""
        self._end()
        abort(self.request)

    def _finish(self) -> None:
        if self._end():
            self._finishing = True
            self.flush()
            self.request.unregisterProducer()
            self.request.finish()

    @_answering
    def close(self, reason: str) -> None:
        self._finish()

    # -- history (docs/reliability.rst) -------------------------------------------------

    def _fill_gap(self, queued: list[tuple[Item, Format, PreparedChunk | None]]) -> None:
        """A gap on a channel held with a prev-id: the missed items from history, then what
        arrived meanwhile; from the origin (Grip-Link) only when history cannot."""
        history = self._history
        assert history is not None
        item = queued[0][0]
        expected = self._last_ids.get(item.channel)
        assert expected is not None
        self._recovering = queued
        lookup = history.since(item.channel, expected, REPLAY_LIMIT)
        lookup.addErrback(self._history_failed).addCallback(self._gap_filled)

    @_answering
    def _gap_filled(self, items: Replayed) -> None:
        if self.ended:
            return
        if items is not None:
            self._replayed([items])
            return
        queued, self._recovering = self._recovering or [], None
        if self.instruct.next_link is not None:
            self._begin_recovery(queued)
        else:  # as without history: the items go out as they came
            for entry in queued:
                self._apply(*entry)

    @_answering
    def _replayed(self, found: list[Replayed]) -> None:
        """Write the items from history in order, then the live ones that arrived during
        the lookup and were not among them."""
        if self.ended:
            return
        queued, self._recovering = self._recovering or [], None
        replayed = set()
        for items in found:
            for item in items or ():
                if self.ended:
                    return
                replayed.add((item.channel, item.id))
                fmt = item.formats.get("http-stream")
                if fmt is None or fmt.action == "hint":
                    self._advance(item)
                else:
                    self._apply(item, fmt, render_http_stream(fmt))
        for entry in queued:
            if self.ended or self._recovering is not None:
                if self._recovering is not None:  # a gap again: its own recovery queues
                    self._recovering.append(entry)
                continue
            if (entry[0].channel, entry[0].id) not in replayed:
                self.deliver(*entry)

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> None:
        self._begin_recovery([])

    def _begin_recovery(self, queued: list[tuple[Item, Format, PreparedChunk | None]]) -> None:
        link = self.instruct.next_link
        if self.ended or link is None or self._recovering is not None:
            return
        self._recovering = queued
        self._cancel_timer("link")
        fetching = maybeDeferred(self.origin.fetch_link, link, self._grip_last())
        fetching.addCallbacks(self._recovered, self._link_failed)

    @_answering
    def _link_failed(self, failure: Failure) -> None:
        if self.ended:
            return
        reason = failure.getErrorMessage() if failure.check(GripError) else repr(failure.value)
        self._log.warn("stream recovery via Grip-Link failed: {reason}", reason=reason)
        queued, self._recovering = self._recovering or [], None
        self._restart_link_timer()
        for entry in queued:
            self._apply(*entry)

    @_answering
    def _recovered(self, answer: Instruct) -> None:
        if self.ended:
            return
        queued, self._recovering = self._recovering or [], None
        body = self._filtered_body(answer)
        if body is None:
            self._finish()
            return
        if answer.hold == "stream":
            self.router.unsubscribe_all(ISubscriber(self))
            self._subscribe(answer)
            self._write(body)
            self._adopt(answer)
        else:
            self._write(body)
            if answer.next_link is None:
                self._finish()
                return
            self.instruct = replace(self.instruct, next_link=answer.next_link)
            self._restart_link_timer()
        self._splice(queued)

    def _splice(self, queued: list[tuple[Item, Format, PreparedChunk | None]]) -> None:
        """Deliver the items that arrived during the fetch and that the answer did not
        already cover: on each channel, those after the item whose id is the answer's
        prev-id."""
        covered: dict[str, int] = {}
        for index, (item, _fmt, _prepared) in enumerate(queued):
            if item.id is not None and item.id == self._last_ids.get(item.channel):
                covered[item.channel] = index
        for index, entry in enumerate(queued):
            if self.ended:
                return
            if index > covered.get(entry[0].channel, -1):
                self._apply(*entry)

    # -- producer (client flow control) -------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._queued_while_paused = 0
        if self._budget is not None:
            self._budget.release(self)

    def stopProducing(self) -> None:
        self._end()

    @override
    def _end(self) -> bool:
        """Also leave the request: registered as its producer, the stream and the request
        point at each other, and only the cyclic collector would free them (issue 19); and
        leave the write budget, which would count (and hold) a client gone while behind."""
        if self._budget is not None:
            self._budget.release(self)
        if not super()._end():
            return False
        if self.request.producer is self:
            self.request.producer = None
        return True
