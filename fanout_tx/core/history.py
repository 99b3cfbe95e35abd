"""Built-in channel history, in memory: what a resume or rewind replays (docs/reliability.rst).

The router records each item that has an id once, after de-duplication and sequencing, in
the order it delivers them (``Router.publish``); every reader (the history API, streams,
long-polls, WebSockets, XMPP, webhooks) asks the same ``IHistory``. This store keeps, per
channel, the newest ``max_items`` items younger than ``max_age``, and all channels together
within ``max_bytes``: past it the oldest item of any channel goes first. Items are kept as
published (the ``Item`` value itself, every format), so a replay renders them like live ones
and recording costs one append. With workers fed by one in-machine bus, each worker records
every item in the same order, so each one's history is the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from fanout_tx.core.interfaces import IHistory
from fanout_tx.core.items import Item

# Bytes counted per kept item beyond its payload: the Item and its Format objects, their
# dicts, the store's entry tuple and queue slots, as measured with tracemalloc on CPython
# 3.11 (about 750 for a one-format item), rounded up; tests/test_history_memory.py checks
# RSS against them. Per channel: its dict slot and list.
ITEM_OVERHEAD = 450
FORMAT_OVERHEAD = 350
CHANNEL_OVERHEAD = 450


def _value_size(value: Any) -> int:
    """Bytes of text in a format's fields (headers, code, reason), roughly."""
    if isinstance(value, (str, bytes)):
        return len(value) + 50
    if isinstance(value, Mapping):
        return sum(_value_size(k) + _value_size(v) for k, v in value.items()) + 100
    if isinstance(value, (list, tuple)):
        return sum(_value_size(v) for v in value) + 60
    return 30


def item_size(item: Item) -> int:
    """What keeping ``item`` costs, as this store counts it against ``max_bytes`` (once per
    item, on the publish path: empty fields and meta, the usual case, cost nothing)."""
    size = ITEM_OVERHEAD + len(item.id or "") + len(item.prev_id or "")
    if item.meta:
        size += _value_size(item.meta)
    for fmt in item.formats.values():
        size += FORMAT_OVERHEAD + len(fmt.content or b"")
        if fmt.fields:
            size += _value_size(fmt.fields)
    return size


def after(entries: list[Item], item_id: str, limit: int) -> list[Item] | None:
    """The items after the one whose id is ``item_id`` (at most ``limit``), oldest first;
    None when no kept item has that id (older than history, or never seen)."""
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].id == item_id:
            return entries[index + 1:index + 1 + limit]
    return None


# One kept item: the item, its counted size, when it was recorded.
_Entry = tuple[Item, int, float]


@implementer(IHistory)
class MemoryHistory:
    """Per channel a list of entries, oldest first; ``_order`` names the channel of every
    recorded entry in recording order, so the oldest entry of all is found without a scan.
    An entry trimmed by its channel's ``max_items`` leaves its name in ``_order``; ``_stale``
    counts those per channel, and since a channel's names in ``_order`` come in the order of
    its entries, the first ones popped are exactly the trimmed ones. ``_order`` is rebuilt
    when stale names outnumber the kept entries."""

    def __init__(self, clock: IReactorTime, max_items: int, max_age: float = 0.0,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self._clock = clock
        self.max_items = max_items
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._channels: dict[str, list[_Entry]] = {}
        self._order: deque[str] = deque()
        self._stale: dict[str, int] = {}
        self.bytes = 0  # counted bytes of every kept item and channel
        self.count = 0  # kept items
        self.evicted = 0  # items dropped for max_bytes or max_age (not max_items)
        self._next_expiry = 0.0  # no kept item is older than max_age before this time

    # -- writing -------------------------------------------------------------------------

    def record(self, item: Item) -> None:
        """Once per published item with an id, on the publish path: a few appends, and
        eviction only when a limit is reached."""
        channel = item.channel
        entries = self._channels.get(channel)
        if entries is None:
            entries = self._channels[channel] = []
            self.bytes += CHANNEL_OVERHEAD + len(channel)
        size = item_size(item)
        now = self._clock.seconds()
        entries.append((item, size, now))
        self._order.append(channel)
        self.bytes += size
        self.count += 1
        if len(entries) > self.max_items:
            self.bytes -= entries.pop(0)[1]
            self.count -= 1
            self._stale[channel] = self._stale.get(channel, 0) + 1
            if len(self._order) > 2 * self.count + 1024:
                self._rebuild_order()
        if self.bytes > self.max_bytes:
            while self.bytes > self.max_bytes and self._pop_oldest():
                self.evicted += 1
        if now >= self._next_expiry:
            self._expire()

    def _head(self) -> str | None:
        """The channel of the oldest kept entry, dropping stale names before it."""
        order, stale = self._order, self._stale
        while order:
            channel = order[0]
            trimmed = stale.get(channel)
            if not trimmed:
                return channel
            order.popleft()
            if trimmed == 1:
                del stale[channel]
            else:
                stale[channel] = trimmed - 1
        return None

    def _pop_oldest(self) -> bool:
        channel = self._head()
        if channel is None:
            return False
        self._order.popleft()
        entries = self._channels[channel]
        self.bytes -= entries.pop(0)[1]
        self.count -= 1
        if not entries:
            del self._channels[channel]
            self.bytes -= CHANNEL_OVERHEAD + len(channel)
        return True

    def _expire(self) -> None:
        """Drop what is older than ``max_age``; note when the oldest kept item will be."""
        if not self.max_age:
            self._next_expiry = float("inf")
            return
        oldest = self._clock.seconds() - self.max_age
        while (channel := self._head()) is not None:
            recorded = self._channels[channel][0][2]
            if recorded >= oldest:
                self._next_expiry = recorded + self.max_age
                return
            self._pop_oldest()
            self.evicted += 1
        self._next_expiry = 0.0  # nothing kept: the next record sets it

    def _rebuild_order(self) -> None:
        # Times never decrease within a channel, and the sort is stable: each channel keeps
        # its own order; channels recorded in the same instant are equally old.
        kept = sorted(((entry[2], channel) for channel, entries in self._channels.items()
                       for entry in entries), key=lambda pair: pair[0])
        self._order = deque(channel for _when, channel in kept)
        self._stale = {}

    # -- reading -------------------------------------------------------------------------

    def _items(self, channel: str) -> list[Item]:
        self._expire()
        return [entry[0] for entry in self._channels.get(channel, ())]

    def since(self, channel: str, item_id: str, limit: int) -> Deferred[list[Item] | None]:
        return succeed(after(self._items(channel), item_id, limit))

    def last(self, channel: str, count: int) -> Deferred[list[Item]]:
        items = self._items(channel)
        return succeed(items[-count:] if count > 0 else [])
