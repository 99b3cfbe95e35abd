"""Pushpin-compatible stats on a ZeroMQ PUB socket (``[handler] stats_spec``).

Each PUB message is ``<type> T<tnetstring>`` or ``<type> J<json>`` (``stats_format``), with
the types and fields Pushpin 1.36's handler sends, observed on Debian's package:

- ``conn`` ``{from, id, type: http|ws, peer-address, ttl: 120}`` when a connection holds its
  first subscription, ``{from, id, unavailable: true}`` when it ends;
- ``sub`` ``{from, mode: response|stream|ws, channel, subscribers, ttl: 60}``, or
  ``{from, mode, channel, unavailable: true}`` when a channel loses its last one;
- ``message`` ``{from, channel, item-id, count, transport}`` once per item and format;
- ``activity`` ``{from, count}`` and ``counts`` ``{from, requests-received}`` for requests;
- ``report`` every ``stats_report_interval`` seconds: ``connections``, ``minutes``,
  ``received``, ``sent``, ``http-response-sent``, ``duration`` (ms) and Pushpin's byte and
  message counters, which fanout_tx does not keep (always 0).

conn and sub are sent again every ``REFRESH`` seconds so a consumer's TTLs do not expire.
(differs) conn is sent for held connections (those with a subscription), and sub also for
the xmpp and webhook transports, with their format name as the mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import zmq
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.interfaces import IRouterObserver, ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router
from fanout_tx.inputs.zmq_bind import bind
from fanout_tx.ops.startup import StartupError

CONN_TTL = 120
SUB_TTL = 60
REFRESH = 30.0
ACTIVITY_FLUSH = 1.0

CONN_TYPE_OF_FORMAT = {"http-response": "http", "http-stream": "http", "ws-message": "ws"}
MODE_OF_FORMAT = {"http-response": "response", "http-stream": "stream", "ws-message": "ws"}
UNTRACKED_REPORT_FIELDS = (
    "client-content-bytes-received", "client-content-bytes-sent",
    "client-header-bytes-received", "client-header-bytes-sent",
    "client-messages-received", "client-messages-sent",
    "server-content-bytes-received", "server-content-bytes-sent",
    "server-header-bytes-received", "server-header-bytes-sent",
    "server-messages-received", "server-messages-sent",
)


def encode(kind: str, body: dict[str, Any], fmt: str) -> bytes:
    """One PUB message, as Pushpin frames it."""
    if fmt == "json":
        return kind.encode() + b" J" + json.dumps(body, separators=(",", ":")).encode()
    return kind.encode() + b" T" + tnetstring.dumps(body)


def _peer(subscriber: ISubscriber) -> str | None:
    """The client's address for held HTTP requests (the only subscribers that carry one)."""
    request = getattr(subscriber, "request", None)
    if request is None:
        return None
    return getattr(request.getClientAddress(), "host", None)


class Totals:
    """Running totals the report turns into per-interval numbers."""

    def __init__(self, received: Callable[[], int], router: Router,
                 requests: Callable[[], int]) -> None:
        self.received = received
        self.router = router
        self.requests = requests

    def snapshot(self) -> dict[str, int]:
        deliveries = self.router.deliveries
        return {
            "received": self.received(),
            "sent": sum(deliveries.values()),
            "http-response-sent": deliveries["http-response"],
        }


@implementer(IRouterObserver)
class StatsPublisher(Service):
    """The ``stats`` service: a bound PUB socket fed by the router's observer calls. A
    worker's (``upstream`` given) binds nothing: its messages go to its supervisor, whose
    own publisher sends them on (``relay``), so the one socket reports every worker's
    connections, each worker under its own ``from``."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, context: zmq.Context | None, spec: str, fmt: str,
                 report_interval: float, router: Router, totals: Totals,
                 upstream: Callable[[bytes], None] | None = None) -> None:
        self._upstream = upstream
        self._clock = clock
        self._context = context
        self._spec = spec
        self._format = fmt
        self._interval = report_interval
        self._totals = totals
        self.origin = f"fanout_tx_{os.getpid()}"
        self.endpoint = ""
        self._socket: zmq.Socket | None = None
        self._conns: dict[ISubscriber, dict[str, Any]] = {}
        self._next_conn = 0
        self._subs: dict[tuple[str, str], int] = {}
        self._last = totals.snapshot()
        self._last_requests = totals.requests()
        self._last_report = 0.0
        self._last_refresh = 0.0
        self._connection_seconds = 0.0
        self._loops: list[LoopingCall] = []
        router.add_observer(self)

    # -- Service ----------------------------------------------------------------------------

    @override
    def startService(self) -> None:
        super().startService()
        if self._upstream is None:
            self._bind()
        self._last_report = self._last_refresh = self._clock.seconds()
        for call, interval in ((self.report, self._interval),
                               (self.flush_activity, ACTIVITY_FLUSH)):
            if interval > 0:
                loop = LoopingCall(self._every, call)
                loop.clock = self._clock
                loop.start(interval, now=False)
                self._loops.append(loop)

    def _bind(self) -> None:
        assert self._context is not None
        sock = self._context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            bind(sock, self._spec)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            # ZMQError.errno is always set (zmq_errno() when none is given), typed Optional
            reason = zmq.strerror(e.errno)  # type: ignore[arg-type]
            raise StartupError(f"stats socket cannot bind {self._spec}: {reason}") from None
        self._socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    @override
    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            loop.stop()
        self._loops = []
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _every(self, call: Callable[[], None]) -> None:
        """One tick of a loop: an exception would stop the LoopingCall for good."""
        try:
            call()
        except Exception:
            self._log.failure("stats: {call} failed; trying again on the next tick",
                              call=call.__name__)

    def _send(self, kind: str, body: dict[str, Any]) -> None:
        if self._socket is None and self._upstream is None:
            return
        body["from"] = self.origin
        try:
            message = encode(kind, body, self._format)
        except Exception:  # raised here it would stop a report loop or fail a subscribe
            self._log.failure("stats {kind} message could not be encoded; dropped", kind=kind)
            return
        if self._upstream is not None:
            self._upstream(message)
        else:
            self.relay(message)

    def relay(self, message: bytes) -> None:
        """Send ``message`` (encoded already: a worker's) on the PUB socket."""
        if self._socket is None:
            return
        try:
            self._socket.send(message, zmq.NOBLOCK)
        except zmq.ZMQError as e:  # PUB drops at its high-water mark; nothing else expected
            self._log.warn("stats message dropped: {reason}", reason=str(e))

    # -- IRouterObserver --------------------------------------------------------------------

    def subscriber_added(self, subscriber: ISubscriber) -> None:
        kind = CONN_TYPE_OF_FORMAT.get(subscriber.formats[0]) if subscriber.formats else None
        if kind is None:
            return
        self._next_conn += 1
        conn: dict[str, Any] = {"id": f"{self.origin}:{self._next_conn}", "type": kind}
        peer = _peer(subscriber)
        if peer is not None:
            conn["peer-address"] = peer
        self._conns[subscriber] = conn
        self._send("conn", {**conn, "ttl": CONN_TTL})

    def subscriber_removed(self, subscriber: ISubscriber) -> None:
        conn = self._conns.pop(subscriber, None)
        if conn is not None:
            self._send("conn", {"id": conn["id"], "unavailable": True})

    def group_changed(self, channel: str, format_name: str, count: int) -> None:
        mode = MODE_OF_FORMAT.get(format_name, format_name)
        key = (channel, mode)
        if self._subs.get(key, 0) == count:
            return
        if count:
            self._subs[key] = count
            self._send("sub", {"mode": mode, "channel": channel, "subscribers": count,
                               "ttl": SUB_TTL})
        else:
            del self._subs[key]
            self._send("sub", {"mode": mode, "channel": channel, "unavailable": True})

    def delivered(self, item: Item, format_name: str, count: int) -> None:
        if self._socket is None:
            return
        body: dict[str, Any] = {"channel": item.channel, "count": count,
                                "transport": format_name}
        if item.id is not None:
            body["item-id"] = item.id
        self._send("message", body)

    # -- periodic ---------------------------------------------------------------------------

    def flush_activity(self) -> None:
        """Requests received since the last flush, as Pushpin batches them."""
        requests = self._totals.requests()
        count, self._last_requests = requests - self._last_requests, requests
        if count > 0:
            self._send("activity", {"count": count})
            self._send("counts", {"requests-received": count})

    def report(self) -> None:
        now = self._clock.seconds()
        duration, self._last_report = now - self._last_report, now
        totals = self._totals.snapshot()
        delta = {name: totals[name] - self._last[name] for name in totals}
        self._last = totals
        connections = len(self._conns)
        self._connection_seconds += connections * duration
        minutes = int(self._connection_seconds // 60)
        self._connection_seconds -= minutes * 60
        body: dict[str, Any] = {name: 0 for name in UNTRACKED_REPORT_FIELDS}
        body.update(delta, connections=connections, minutes=minutes,
                    duration=int(duration * 1000))
        self._send("report", body)
        if now - self._last_refresh >= REFRESH:
            self._last_refresh = now
            self._refresh()

    def _refresh(self) -> None:
        for conn in self._conns.values():
            self._send("conn", {**conn, "ttl": CONN_TTL})
        for (channel, mode), count in self._subs.items():
            self._send("sub", {"mode": mode, "channel": channel, "subscribers": count,
                               "ttl": SUB_TTL})
