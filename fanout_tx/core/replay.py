"""A subscription's replay from built-in history (docs/reliability.rst), for subscribers that
take items one by one (WebSocket, XMPP, webhooks; HTTP streams have their own, shared with
Grip-Link recovery).

While a lookup runs (the Redis store answers later), live items for the subscriber wait;
then the items from history go out in order, then the waiting ones that were not among them,
so each item reaches the subscriber once. An id older than history replays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import IHistory
from fanout_tx.core.items import Item

# The most items one replay takes from history ([history] max_items bounds it anyway).
REPLAY_LIMIT = 100_000

# (item, its format for this subscriber, the renderer's output; None for a replayed item)
Entry = tuple[Item, Format, Any]


Send = Callable[[Item, Format, Any], None]


class Replay:
    """``formats``: what the subscriber takes (a replayed item goes out in the first of them
    it has, as the router delivers a multi-format item once). Replayed ``close`` and
    ``hint`` items are skipped: a replay never ends a subscription. ``send``, the
    subscriber's own delivery, is held only while a lookup runs (no cycle through it)."""

    _log = Logger()

    def __init__(self, formats: tuple[str, ...]):
        self._formats = formats
        self.waiting: list[Entry] | None = None  # live items held back while looking up
        self._lookups = 0

    def start(self, history: IHistory | None, channel: str, since: str | None,
              rewind: int, send: Send) -> None:
        """Look up what ``channel``'s subscriber asked for (nothing with history off)."""
        if history is None or (since is None and not rewind):
            return
        lookup: Deferred[list[Item] | None]
        if rewind:
            lookup = history.last(channel, rewind).addCallback(list)
        else:
            assert since is not None
            lookup = history.since(channel, since, REPLAY_LIMIT)
        self._lookups += 1
        if self.waiting is None:
            self.waiting = []
        lookup.addErrback(self._failed).addCallback(self._found, send)

    def _failed(self, failure: Failure) -> None:
        self._log.warn("history lookup failed; live items only: {error}",
                       error=failure.getErrorMessage())

    def _found(self, items: list[Item] | None, send: Send) -> None:
        self._lookups -= 1
        sent = set()
        for item in items or ():
            fmt = next((f for name, f in item.formats.items() if name in self._formats), None)
            if fmt is not None and fmt.action == "send":
                sent.add((item.channel, item.id))
                send(item, fmt, None)
        waiting = [e for e in self.waiting or () if (e[0].channel, e[0].id) not in sent]
        if self._lookups:
            self.waiting = waiting  # another lookup still runs: they keep waiting
            return
        self.waiting = None
        for entry in waiting:
            send(*entry)
