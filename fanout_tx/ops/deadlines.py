"""Deadlines for what a client owes the server: a whole request head, a body at a minimum
rate, and the next request on a kept-alive connection (issue 13: slowloris).

Twisted's own idle timer restarts on every byte, so one byte every 20 s held a connection,
and its ``client_maxconn`` place, for as long as the client liked. Here bytes do not move a
deadline: a request head must be complete ``header`` seconds after its first byte (after the
connection opened, for the first request); a body must bring ``body_min_rate`` bytes/s over
each ``body_window`` (the first window is the grace period, and a window in which the server
itself paused the upload is not held against the client); a kept-alive connection may wait
``keepalive`` seconds for the next request's first byte. Once a request is complete nothing is
timed here: a held response, a stream or a WebSocket is what the server is for.

On expiry: a head or body that started gets ``408 Request Timeout`` and the connection is
closed; a connection on which nothing of a request arrived is closed without an answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import BaseProtocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx._transport import stream_transport

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%b")


# Seconds a closing connection has to take what it was sent before it is aborted.
CLOSING_GRACE = 15.0


@dataclass(frozen=True)
class ClientTimeouts:
    """``[runner] client_header_timeout``, ``client_keepalive_timeout``,
    ``client_body_min_rate`` and ``client_body_rate_window``; 0 turns one off."""

    header: float = 10.0
    keepalive: float = 60.0
    body_min_rate: int = 1024  # bytes per second
    body_window: float = 10.0


class ClientDeadlines(BaseProtocol):
    """The deadlines above for a client connection (a Twisted protocol), in phases the
    connection enters: ``_expect_head`` (a new connection, or a head that may start now),
    ``_head_bytes`` / ``_body_bytes`` on data, ``_start_window`` once a head with a body is
    complete, ``_enter("busy", 0)`` once a request is complete, ``_enter("idle", keepalive)``
    once its answer is done. Reads ``client_timeouts`` (ClientTimeouts) and ``dropped`` (a
    Counter by reason, for metrics) from its ``deadline_source`` when it has them."""

    _log = Logger()
    # head | body | busy (a request is complete) | idle (kept alive) | closing
    _phase = "head"
    _due = 0.0  # when the current phase's deadline passes; 0: none
    _head_started = False
    _window_bytes = 0
    _window_pauses = 0
    _timer: IDelayedCall | None = None

    @property
    def deadline_source(self) -> Any:
        """What has ``reactor``, ``client_timeouts`` and ``dropped`` (the site, the factory)."""
        raise NotImplementedError

    @property
    def timeouts(self) -> ClientTimeouts:
        return getattr(self.deadline_source, "client_timeouts", None) or ClientTimeouts()

    def _clock(self) -> IReactorTime:
        """The site's or factory's (tap.py hands every one the reactor)."""
        clock: IReactorTime = self.deadline_source.reactor
        return clock

    def _answer_started(self) -> bool:
        """Whether an answer to the current request has started (no 408 then)."""
        raise NotImplementedError

    def _upload(self) -> Any:
        """The request's streamed body (transports/http/upload.py), which the server pauses
        while the origin does not keep up: that time is not the client's."""
        raise NotImplementedError

    # One lazy timer per connection: a new phase only notes its deadline, and the timer is
    # moved only when that deadline comes sooner than the timer. It is set for at most the
    # head deadline ahead (when it fires early it sleeps again for what is left; when
    # nothing is due it lapses), so a kept-alive connection costs no timer operation per
    # request, only one per head deadline's time at most (Twisted's idle timer took three
    # per request). Cancelled when the connection ends or is handed to a WebSocket.

    def _enter(self, phase: str, delay: float) -> None:
        """Phase ``phase``, due in ``delay`` seconds (0: no deadline; a timer already set
        finds nothing due when it fires, and is not set again)."""
        self._phase = phase
        if delay <= 0:
            self._due = 0.0
            return
        clock = self._clock()
        self._due = due = clock.seconds() + delay
        timer = self._timer
        if timer is None:
            self._sleep(delay)
        elif timer.getTime() > due:
            timer.reset(delay)

    def _sleep(self, delay: float) -> None:
        header = self.timeouts.header
        self._timer = self._clock().callLater(min(delay, header) if header > 0 else delay,
                                              self._check)

    def _stop_deadlines(self) -> None:
        """No deadline any more: the connection ended, or is no longer this protocol's."""
        self._due = 0.0
        self._phase = "busy"
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check(self) -> None:
        self._timer = None
        if not self._due:
            return
        left = self._due - self._clock().seconds()
        if left > 0:
            self._sleep(left)
            return
        self._due = 0.0
        {"head": self._head_expired, "body": self._window_over, "idle": self._idle_expired,
         "closing": stream_transport(self).abortConnection}[self._phase]()

    def _expect_head(self) -> None:
        self._head_started = False
        self._enter("head", self.timeouts.header)

    def _data_arrived(self, size: int) -> None:
        """Bytes from the client, before they are parsed."""
        phase = self._phase
        if phase == "idle":
            self._expect_head()  # the next request's first byte: its head is now due
            phase = "head"
        if phase == "head":
            self._head_started = True
        elif phase == "body":
            self._window_bytes += size

    # -- the body's rate ----------------------------------------------------------------------

    def _start_window(self) -> None:
        timeouts = self.timeouts
        self._window_bytes = 0
        upload = self._upload()
        self._window_pauses = upload.pauses if upload is not None else 0
        self._enter("body", timeouts.body_window if timeouts.body_min_rate > 0 else 0)

    def _window_over(self) -> None:
        timeouts = self.timeouts
        needed = timeouts.body_min_rate * timeouts.body_window
        upload = self._upload()
        paused = upload is not None and (upload.client_paused
                                         or upload.pauses != self._window_pauses)
        if self._window_bytes < needed and not paused:
            self._expire("body_rate", f"request body slower than {timeouts.body_min_rate} "
                                      f"bytes/s over {timeouts.body_window:g}s",
                         b"Request body too slow.\n")
            return
        self._start_window()

    # -- expiry --------------------------------------------------------------------------------

    def _head_expired(self) -> None:
        text = f"request head not complete within {self.timeouts.header:g}s"
        self._expire("header_timeout", text,
                     b"Request head not received in time.\n" if self._head_started else None)

    def _idle_expired(self) -> None:
        self._log.debug("closing a kept-alive connection from {client}: idle for {timeout}s",
                        client=stream_transport(self).getPeer(), timeout=self.timeouts.keepalive)
        self._close()

    def _expire(self, reason: str, text: str, answer: bytes | None) -> None:
        """408 (unless nothing of a request arrived, or an answer already started), then
        close; counted by ``reason`` and logged. A connection already closing (after a
        400 or 431 the client does not read) is only aborted."""
        if getattr(self.transport, "disconnecting", False):
            stream_transport(self).abortConnection()
            return
        dropped: Counter[str] | None = getattr(self.deadline_source, "dropped", None)
        if dropped is not None:
            dropped[reason] += 1
        self._log.info("{code} for {client}: {text}", code="408" if answer else "closed",
                       client=stream_transport(self).getPeer(), text=text)
        if answer is not None and not self._answer_started():
            stream_transport(self).write(_REQUEST_TIMEOUT % (len(answer), answer))
        self._close()

    def _close(self) -> None:
        """Close once what is written is sent; abort if the client does not take it."""
        stream_transport(self).loseConnection()
        self._enter("closing", CLOSING_GRACE)


class DeadlineChannel(ClientDeadlines, http.HTTPChannel):
    """Twisted's HTTP/1.1 channel (the publish port's) with the deadlines above instead of
    its idle timer, entered from HTTPChannel's own steps."""

    timeOut = None  # Twisted's per-byte idle timer: replaced by the deadlines (the site
    # sets its own value on each channel: connectionMade takes it away again)
    site: Site  # set by Site.buildProtocol

    @property
    @override
    def deadline_source(self) -> Any:
        return self.site

    @override
    def _answer_started(self) -> bool:
        return any(getattr(r, "startedWriting", False) for r in self.requests)

    @override
    def _upload(self) -> Any:
        return getattr(self.requests[-1], "upload", None) if self.requests else None

    @override
    def connectionMade(self) -> None:
        self.timeOut = None
        super().connectionMade()
        self._expect_head()

    @override
    def dataReceived(self, data: bytes) -> None:
        self._data_arrived(len(data))
        super().dataReceived(data)

    @override
    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0 and self._phase == "head":  # None: chunked
            self._start_window()

    @override
    def allContentReceived(self) -> None:
        self._enter("busy", 0)
        super().allContentReceived()

    @override
    def requestDone(self, request: Any) -> None:
        if self.persistent:  # before super(): it replays pipelined bytes through dataReceived
            self._enter("idle", self.timeouts.keepalive)
        super().requestDone(request)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadlines()
        super().connectionLost(reason)
