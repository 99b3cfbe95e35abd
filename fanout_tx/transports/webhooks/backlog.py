"""The bytes pending for every subscription together, and which subscription holds the most.

``[webhooks] max_pending_bytes_total`` evicts from the largest backlog first: a dead target
that hoards pays, small healthy subscriptions keep their deliveries. Finding the largest must
stay cheap at 10,000 subscriptions (no scan per delivery), so it is a lazy max-heap: a queue
is pushed with its size whenever it grows; an entry that comes up with another size than the
queue's (it shrank since) or for a closed queue is fixed or dropped then, and the heap is
rebuilt once such stale entries outnumber the queues.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection
from typing import Generic, Protocol, TypeVar

# Stale entries allowed beyond one per queue before the heap is rebuilt.
REBUILD_SLACK = 64


class Holder(Protocol):
    pending_bytes: int
    closed: bool


H = TypeVar("H", bound=Holder)


class Backlog(Generic[H]):
    """``holders`` gives every open queue (to rebuild the heap from)."""

    def __init__(self, holders: Callable[[], Collection[H]]) -> None:
        self._holders = holders
        self.total = 0
        self._heap: list[tuple[int, int, H]] = []
        self._tie = itertools.count()  # so entries never compare the queues themselves

    def changed(self, holder: H, delta: int) -> None:
        """``holder.pending_bytes`` changed by ``delta`` (already applied)."""
        self.total += delta
        if delta > 0:
            self._push(holder)

    def _push(self, holder: H) -> None:
        heapq.heappush(self._heap, (-holder.pending_bytes, next(self._tie), holder))
        if len(self._heap) > 2 * len(self._holders()) + REBUILD_SLACK:
            self._heap = [(-h.pending_bytes, next(self._tie), h) for h in self._holders()
                          if h.pending_bytes > 0]
            heapq.heapify(self._heap)

    def pop_largest(self) -> H | None:
        """The open queue with the most pending bytes (None: none holds any), taken out of
        the heap: ``put_back`` it once done with it."""
        while self._heap:
            size, _tie, holder = heapq.heappop(self._heap)
            if holder.closed or holder.pending_bytes <= 0:
                continue
            if -size == holder.pending_bytes:
                return holder
            # Stale: it shrank since (entries never undercount). Its true size goes back
            # in; the heap may now hold a bigger one.
            self._push(holder)
        return None

    def put_back(self, holder: H) -> None:
        if not holder.closed and holder.pending_bytes > 0:
            self._push(holder)
