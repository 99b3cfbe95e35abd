"""Write coalescing shared by every push transport: queue this turn, write once next turn.

A publish burst (many items in one reactor turn) then costs one transport write per client
instead of one per item per client: the per-write work (``transport.write``, the epoll
registration), not Python's loop, is what limits fan-out throughput.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class Flushable(Protocol):
    def flush(self) -> None:
        """Write everything queued for this client as one buffer."""


class WriteBatch:
    """The clients that have output queued in this reactor turn, flushed together on the
    next one."""

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._clients: list[Flushable] = []
        self._call: IDelayedCall | None = None

    def add(self, client: Flushable) -> None:
        """Flush ``client`` on the next turn; call once per turn per client (when its queue
        goes from empty to non-empty)."""
        self._clients.append(client)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.flush()
            except Exception:
                self._log.failure("writing to a client failed")
