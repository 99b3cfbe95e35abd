"""Many deadlines on one timer.

A timer per waiting request (``callLater``, then ``cancel`` when the answer comes) costs two
heap operations per request on the proxy's hot path, and the answer almost always comes
first. Here a deadline is a dict entry; one timer is set for the earliest, and moved only
when a sooner one arrives. It is cancelled when nothing waits any more, so no timer outlives
the work it is for.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

K = TypeVar("K", bound=Hashable)


class DeadlineSet(Generic[K]):
    """Keys with a deadline each; ``expire(key)`` is called for every key still in the set
    when its deadline passes (after it is removed)."""

    def __init__(self, clock: IReactorTime, expire: Callable[[K], None]) -> None:
        self._clock = clock
        self._expire = expire
        self._due: dict[K, float] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: K, delay: float) -> None:
        """``key`` expires in ``delay`` seconds unless discarded first."""
        due = self._clock.seconds() + delay
        self._due[key] = due
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(delay, self._fire)
        elif timer.getTime() > due:
            timer.reset(delay)

    def discard(self, key: K) -> bool:
        """Drop ``key``'s deadline; False when it had none (it expired, or was never added)."""
        if self._due.pop(key, None) is None:
            return False
        if not self._due:
            self.stop()
        return True

    def stop(self) -> None:
        """Forget every deadline and the timer."""
        self._due.clear()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        expired = [key for key, due in self._due.items() if due <= now]
        for key in expired:
            del self._due[key]
        if self._due:
            self._timer = self._clock.callLater(min(self._due.values()) - now, self._fire)
        for key in expired:
            self._expire(key)
