"""``[runner] max_buffered_bytes``: one cap on the bytes queued, across every connection, for
push clients that stopped reading (HTTP streams and WebSockets).

Each connection already has its own cap (1 MB by default); this one bounds the sum, which a
crowd of slow readers (or one publish burst to many of them) could otherwise push to
``connections × per-connection cap``. Only clients whose socket is full are tracked, and
only while it is: a client that keeps up costs nothing here, so the fan-out of one item to
N readers does no extra work. Past the cap the clients that fell behind first (and have
stayed behind since) are dropped until the sum is under it again; the drop runs once, on
the next reactor turn, not inside a delivery.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024


class SlowClient(Protocol):
    def drop_slow(self) -> None:
        """Close the connection: the server-wide buffer budget is spent."""


class WriteBudget:
    """Bytes queued for slow clients, by client, in the order they fell behind."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, limit: int = DEFAULT_MAX_BUFFERED_BYTES) -> None:
        self.limit = limit  # 0: counted, never enforced
        self.total = 0
        self.dropped = 0  # clients dropped, for /metrics
        self._clock = clock
        # insertion order = when each client fell behind; updating a value keeps its place
        self._behind: dict[SlowClient, int] = {}
        self._check: IDelayedCall | None = None

    def add(self, client: SlowClient, size: int) -> None:
        """``size`` more bytes queued for ``client``, whose socket is full."""
        behind = self._behind
        behind[client] = behind.get(client, 0) + size
        self.total += size
        if self.limit and self.total > self.limit and self._check is None:
            self._check = self._clock.callLater(0, self._enforce)

    def release(self, client: SlowClient) -> None:
        """``client`` reads again (its socket took what was queued) or is gone."""
        self.total -= self._behind.pop(client, 0)

    def _enforce(self) -> None:
        self._check = None
        count, freed = 0, 0
        while self.total > self.limit and self._behind:
            client = next(iter(self._behind))
            size = self._behind.pop(client)
            self.total -= size
            count, freed = count + 1, freed + size
            client.drop_slow()
        if count:
            self.dropped += count
            self._log.warn("dropped {count} clients that do not read: {freed} bytes were "
                           "queued for them, over [runner] max_buffered_bytes ({limit})",
                           count=count, freed=freed, limit=self.limit)
