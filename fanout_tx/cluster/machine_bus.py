"""The in-machine bus between the supervisor and its workers (``[runner] workers`` > 1).

One pipe pair per worker (ops/workers.py spawns them): down, the supervisor sends every item
its inputs accepted, in order, in the wire form instances share through Redis
(core/codecs/item_codec.py), so each worker's router de-duplicates, sequences and records
last ids exactly as every other worker's does; up, a worker tells which channels it holds
(the ZeroMQ SUB input subscribes to their union), its /metrics text and its stats messages.

A frame is a 4-byte big-endian length, then one kind byte, then the body. Pipes keep order
and lose nothing; a worker that stops reading is the supervisor's to bound (ops/workers.py).
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.core.codecs.item_codec import (
    ItemCodecError,
    decode_batch,
    encode_items,
    item_address,
    item_from_json,
)
from fanout_tx.core.interfaces import IBus, IChannelListener
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router

# Down: items, channels' last ids (the supervisor's at a worker's start; a Redis snapshot),
# recover every session.
ITEMS, LAST_ID, RECOVER = b"I", b"L", b"R"
# Up: started (serving its ports), channel added / removed, /metrics text, a stats message.
READY, CHANNEL_ADDED, CHANNEL_REMOVED, METRICS, STATS = b"U", b"+", b"-", b"M", b"S"
# Up frames a worker may drop while the supervisor does not read: the next metrics report
# replaces the last, and stats are sampled anyway. The others must arrive.
_DROPPABLE = frozenset({METRICS, STATS})

# Largest frame either way: a publish body is at most push_in_http_max_body_size (1 MB by
# default) and its encoding a third larger; a metrics text is a few kB.
MAX_FRAME = 64 * 1024 * 1024

_log = Logger(namespace="fanout_tx.cluster.machine_bus")


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack("!I", len(body) + 1) + kind + body


class FrameReader(Int32StringReceiver):
    """Splits a pipe's bytes into (kind, body); a frame over MAX_FRAME ends the link
    (``on_oversized``): the other side is broken, not hostile, and is restarted."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self, on_frame: Callable[[bytes, bytes], None],
                 on_oversized: Callable[[int], None]) -> None:
        self._on_frame = on_frame
        self._on_oversized = on_oversized

    @override
    def stringReceived(self, string: bytes) -> None:
        self._on_frame(string[:1], string[1:])

    @override
    def lengthLimitExceeded(self, length: int) -> None:
        self._on_oversized(length)


class MachineFanout:
    """What the machine's inputs (HTTP API, ZeroMQ, Redis, the command socket) deliver to:
    this process's router (the XMPP and webhook subscribers live here) and every worker's,
    each item encoded once for all workers."""

    def __init__(self, router: Router, broadcast: Callable[[bytes], None]) -> None:
        self.router = router
        self._broadcast = broadcast

    def publish(self, item: Item) -> None:
        self.publish_items((item,))

    def publish_items(self, items: Sequence[Item]) -> None:
        for item in items:
            self.router.publish(item)
        try:
            payload = encode_items(items)
        except ItemCodecError:  # parsed items always encode; a bug must not stop the input
            _log.failure("items on {channel} could not be sent to the workers",
                         channel=items[0].channel if items else "")
            return
        self._broadcast(frame(ITEMS, payload))

    def set_last_id(self, channel: str, item_id: str) -> None:
        self.router.set_last_id(channel, item_id)
        self._broadcast(frame(LAST_ID, json.dumps([[channel, item_id]]).encode()))

    def snapshot(self) -> bytes:
        """The frame a worker gets first: every channel's last id as this router has it, so
        a worker started late (a restart) answers ``prev-id`` and ``Grip-Last`` as the
        others do, rather than knowing no channel."""
        return frame(LAST_ID, json.dumps(self.router.last_ids()).encode())

    def recover_all(self) -> int:
        """Every session on the machine re-requests its origin; the count is this
        process's only (the workers answer on their own)."""
        self._broadcast(frame(RECOVER))
        return self.router.recover_all()


@implementer(IBus)
class MachineBus:
    """The IBus of a supervisor without Redis: publishing is handing to the fanout."""

    def __init__(self, fanout: MachineFanout) -> None:
        self.fanout = fanout

    def publish(self, items: Sequence[Item], input_name: str) -> Deferred[None]:
        self.fanout.publish_items(items)
        return succeed(None)


@implementer(IChannelListener)
class ChannelUnion:
    """The channels held anywhere on the machine: this process's router and each worker's
    (as they report them). The ZeroMQ SUB input listens here as it would to one router."""

    def __init__(self, router: Router) -> None:
        self._counts: Counter[str] = Counter()
        self._held: dict[Hashable, set[str]] = {}
        self._listeners: list[IChannelListener] = []
        router.add_channel_listener(self)
        for channel in router.channels():
            self.add(self, channel)

    def add_channel_listener(self, listener: IChannelListener) -> None:
        self._listeners.append(listener)

    def channels(self) -> frozenset[str]:
        return frozenset(self._counts)

    def add(self, source: Hashable, channel: str) -> None:
        held = self._held.setdefault(source, set())
        if channel in held:
            return
        held.add(channel)
        self._counts[channel] += 1
        if self._counts[channel] == 1:
            for listener in self._listeners:
                listener.channel_added(channel)

    def remove(self, source: Hashable, channel: str) -> None:
        held = self._held.get(source)
        if held is None or channel not in held:
            return
        held.discard(channel)
        self._counts[channel] -= 1
        if self._counts[channel] == 0:
            del self._counts[channel]
            for listener in self._listeners:
                listener.channel_removed(channel)

    def forget(self, source: Hashable) -> None:
        """``source`` (a worker that ended) holds nothing any more."""
        for channel in list(self._held.get(source, ())):
            self.remove(source, channel)
        self._held.pop(source, None)

    def channel_added(self, channel: str) -> None:
        self.add(self, channel)

    def channel_removed(self, channel: str) -> None:
        self.remove(self, channel)


@implementer(IChannelListener, IPushProducer)
class WorkerBus(FrameReader):
    """A worker's end of its pipes (run on ``StandardIO`` over the inherited descriptors):
    items and commands in, to this worker's router; its channels, metrics and stats out.
    The supervisor gone (end of file) calls ``on_lost``: the worker stops. While the pipe up
    is full (the supervisor not reading), metrics and stats frames are dropped rather than
    queued, so what waits is bounded by the channels' frames."""

    _paused = False
    dropped = 0  # metrics and stats frames dropped while paused

    def __init__(self, router: Router, on_lost: Callable[[], None]) -> None:
        super().__init__(self._received, self._oversized)
        self._router = router
        self._on_lost = on_lost
        router.add_channel_listener(self)

    def send(self, kind: bytes, body: bytes = b"") -> None:
        if self.transport is None:
            return
        if self._paused and kind in _DROPPABLE:
            if not self.dropped:
                _log.warn("machine bus: the supervisor is not reading; metrics and stats "
                          "reports are dropped until it does")
            self.dropped += 1
            return
        self.transport.write(frame(kind, body))

    @override
    def connectionMade(self) -> None:
        # StandardIO is an IConsumer: it pauses this producer while the pipe up is full.
        cast(IConsumer, self.transport).registerProducer(self, True)
        for channel in self._router.channels():
            self.channel_added(channel)

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer's name
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer's name
        self._paused = False

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer's name
        self._paused = True

    @override
    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._on_lost()

    def channel_added(self, channel: str) -> None:
        self.send(CHANNEL_ADDED, channel.encode("utf-8", "surrogatepass"))

    def channel_removed(self, channel: str) -> None:
        self.send(CHANNEL_REMOVED, channel.encode("utf-8", "surrogatepass"))

    def _received(self, kind: bytes, body: bytes) -> None:
        try:
            if kind == ITEMS:
                self._publish(body)
            elif kind == LAST_ID:
                for channel, item_id in json.loads(body):
                    self._router.set_last_id(channel, item_id)
            elif kind == RECOVER:
                self._router.recover_all()
            else:
                _log.warn("machine bus: unknown frame kind {kind!r}; skipped", kind=kind)
        except Exception:
            _log.failure("machine bus: a {kind!r} frame could not be handled; skipped",
                         kind=kind)

    def _publish(self, body: bytes) -> None:
        """Every item to this worker's router, in order; an item on a channel that nothing
        here holds is not decoded beyond its channel and id (each worker gets every item,
        and most channels are held on one worker only)."""
        router = self._router
        for value in decode_batch(body):
            channel, item_id = item_address(value)
            if router.needs_whole_item(channel):
                router.publish(item_from_json(value))
            else:
                router.publish_unheld(channel, item_id)

    def _oversized(self, length: int) -> None:
        _log.error("machine bus: a {length}-byte frame is over the limit; stopping",
                   length=length)
        if self.transport is not None:
            self.transport.loseConnection()
