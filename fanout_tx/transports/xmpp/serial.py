"""Runs asynchronous jobs one at a time per key, with a bounded queue per key and a bound on
all jobs together (many keys with a few jobs each must not add up without limit).

Stanzas from one JID go to the backend in order and their answers are applied in order, so
a late answer to an earlier ``available`` cannot re-subscribe a JID that has since left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

Job = Callable[[], "Deferred[Any] | Any"]


class KeyedSerializer:
    _log = Logger()

    def __init__(self, max_queued: int, max_total: int) -> None:
        self._max_queued = max_queued
        self._max_total = max_total
        self._total = 0  # jobs running or waiting, every key's
        self._queues: dict[str, deque[Job]] = {}
        self._idle_waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        """How many keys have a job running."""
        return len(self._queues)

    def when_idle(self) -> Deferred[None]:
        """Fires once no job is running or waiting (for a clean shutdown)."""
        if not self._queues:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def submit(self, key: str, job: Job) -> bool:
        """Run ``job`` after the key's earlier jobs; False (job dropped) when the key already
        has ``max_queued`` jobs waiting or ``max_total`` jobs are running or waiting."""
        if self._total >= self._max_total:
            return False
        queue = self._queues.get(key)
        if queue is None:
            self._total += 1
            self._queues[key] = deque()
            self._start(key, job)
            return True
        if len(queue) >= self._max_queued:
            return False
        self._total += 1
        queue.append(job)
        return True

    def _start(self, key: str, job: Job) -> None:
        maybeDeferred(job).addBoth(self._finished, key)

    def _finished(self, result: Any, key: str) -> None:
        if isinstance(result, Failure):
            self._log.failure("job for {key} failed", result, key=key)
        self._total -= 1
        queue = self._queues[key]
        if queue:
            self._start(key, queue.popleft())
        else:
            del self._queues[key]
            if not self._queues:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
