"""LocalBus: items go straight to this process's router. RedisBus plugs in at this seam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import Item


class ItemSink(Protocol):
    """Where a bus delivers: a Router, or the machine's fan-out to its workers
    (cluster/machine_bus.py) that delivers to every router on the machine."""

    def publish(self, item: Item) -> None: ...

    def set_last_id(self, channel: str, item_id: str) -> None: ...


@implementer(IBus)
class LocalBus:
    """One process, in memory: publishing is delivering."""

    def __init__(self, router: ItemSink) -> None:
        self.router = router

    def publish(self, items: Sequence[Item], input_name: str) -> Deferred[None]:
        for item in items:
            self.router.publish(item)
        return succeed(None)


class BusUnavailableError(Exception):
    """The items reached local subscribers but could not be shared with other instances
    (Redis away); the HTTP publish API answers 503 so the publisher retries."""
