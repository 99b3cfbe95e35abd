"""The bytes pending for every subscription together, and which subscription has the most
bytes waiting (pending and not being attempted: what a cap can evict).

``[webhooks] max_pending_bytes_total`` evicts from the largest backlog first: a dead target
that hoards pays, small healthy subscriptions keep their deliveries. Finding the largest must
stay cheap at 10,000 subscriptions (no scan per delivery, even when every subscription's
pending bytes are all being attempted), so it is a lazy max-heap: a queue is pushed with its
waiting bytes whenever they may have grown; an entry that comes up with another size than
the queue's (it shrank since) or for a closed queue is fixed or dropped then, and the heap
is rebuilt once such stale entries outnumber the queues.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection
from typing import Generic, Protocol, TypeVar

# Stale entries allowed beyond one per queue before the heap is rebuilt.
REBUILD_SLACK = 64


class Holder(Protocol):
    @property
    def closed(self) -> bool: ...

    @property
    def waiting_bytes(self) -> int: ...


H = TypeVar("H", bound=Holder)


class Backlog(Generic[H]):
    """``holders`` gives every open queue (to rebuild the heap from). ``total`` is kept by
    the queues (``count``); the heap only ranks them."""

    def __init__(self, holders: Callable[[], Collection[H]]) -> None:
        self._holders = holders
        self.total = 0
        self._heap: list[tuple[int, int, H]] = []
        self._tie = itertools.count()  # so entries never compare the queues themselves

    def count(self, delta: int) -> None:
        """Pending bytes (waiting or being attempted) changed by ``delta``."""
        self.total += delta

    def track(self, holder: H) -> None:
        """``holder``'s waiting bytes may have grown (or it was taken by ``pop_largest``)."""
        waiting = holder.waiting_bytes
        if holder.closed or waiting <= 0:
            return
        heapq.heappush(self._heap, (-waiting, next(self._tie), holder))
        if len(self._heap) > 2 * len(self._holders()) + REBUILD_SLACK:
            self._heap = [(-w, next(self._tie), h) for h in self._holders()
                          if not h.closed and (w := h.waiting_bytes) > 0]
            heapq.heapify(self._heap)

    def pop_largest(self) -> H | None:
        """The open queue with the most bytes waiting (None: nothing waits anywhere), taken
        out of the heap: ``track`` it again once done with it."""
        while self._heap:
            size, _tie, holder = heapq.heappop(self._heap)
            if holder.closed:
                continue
            waiting = holder.waiting_bytes
            if -size == waiting:
                return holder
            # Stale: it shrank since (entries never undercount). Its true size goes back
            # in; the heap may now hold a bigger one.
            self.track(holder)
        return None
