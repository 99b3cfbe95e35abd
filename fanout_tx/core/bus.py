"""LocalBus: items go straight to this process's router. RedisBus plugs in at this seam."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router


@implementer(IBus)
class LocalBus:
    """One process, in memory: publishing is delivering."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def publish(self, items: Sequence[Item], input_name: str) -> Deferred[None]:
        for item in items:
            self.router.publish(item)
        return succeed(None)


class BusUnavailableError(Exception):
    """The items reached local subscribers but could not be shared with other instances
    (Redis away); the HTTP publish API answers 503 so the publisher retries."""
