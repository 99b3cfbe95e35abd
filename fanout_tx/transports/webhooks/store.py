"""Where subscriptions, pending deliveries and dead letters are kept.

The delivery engine keeps the working state in memory and writes through to a store; the
store is only read back at start-up (``load``) and for the dead-letter listing. MemoryStore
lives as long as the process; RedisStore (redis_store.py) survives restarts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from fanout_tx.transports.webhooks.model import Delivery, Subscription

DEAD_LETTERS_KEPT = 1000


@dataclass
class StoredState:
    subscriptions: list[Subscription] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)


class IWebhookStore(Interface):
    """Write-through persistence for the webhooks transport; every method returns a Deferred."""

    def load():
        """StoredState: every subscription and every pending delivery."""

    def save_subscription(subscription, limit=0):
        """Add or replace a subscription; True, or False when ``limit`` (when above 0)
        subscriptions are stored already and this one is new."""

    def delete_subscription(subscription_id):
        """Forget a subscription with its pending deliveries and dead letters."""

    def save_delivery(delivery):
        """Add or replace a pending delivery (attempts, due time and last result included)."""

    def delete_delivery(subscription_id, webhook_id):
        """A delivery succeeded (or its subscription went away)."""

    def bury(delivery):
        """Move a delivery to its subscription's dead letters (newest DEAD_LETTERS_KEPT kept)."""

    def dead_letters(subscription_id):
        """List of dead-letter dicts, newest first."""

    def close():
        """Release connections."""


@implementer(IWebhookStore)
class MemoryStore:
    """In-process store: the default, when no ``[redis] url`` is configured."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: dict[str, dict[str, Delivery]] = {}
        self._dead: dict[str, deque[dict]] = {}

    def load(self) -> Deferred[StoredState]:
        deliveries = [replace(d) for group in self._deliveries.values() for d in group.values()]
        return succeed(StoredState(list(self._subscriptions.values()), deliveries))

    def save_subscription(self, subscription: Subscription, limit: int = 0) -> Deferred[bool]:
        if (0 < limit <= len(self._subscriptions)
                and subscription.id not in self._subscriptions):
            return succeed(False)
        self._subscriptions[subscription.id] = subscription
        return succeed(True)

    def delete_subscription(self, subscription_id: str) -> Deferred[None]:
        self._subscriptions.pop(subscription_id, None)
        self._deliveries.pop(subscription_id, None)
        self._dead.pop(subscription_id, None)
        return succeed(None)

    def save_delivery(self, delivery: Delivery) -> Deferred[None]:
        # A copy: the engine goes on changing its own object.
        group = self._deliveries.setdefault(delivery.subscription_id, {})
        group[delivery.webhook_id] = replace(delivery)
        return succeed(None)

    def delete_delivery(self, subscription_id: str, webhook_id: str) -> Deferred[None]:
        self._deliveries.get(subscription_id, {}).pop(webhook_id, None)
        return succeed(None)

    def bury(self, delivery: Delivery) -> Deferred[None]:
        self._deliveries.get(delivery.subscription_id, {}).pop(delivery.webhook_id, None)
        dead = self._dead.setdefault(delivery.subscription_id, deque(maxlen=DEAD_LETTERS_KEPT))
        dead.appendleft(delivery.dead_letter())
        return succeed(None)

    def dead_letters(self, subscription_id: str) -> Deferred[list[dict]]:
        return succeed(list(self._dead.get(subscription_id, ())))

    def close(self) -> Deferred[None]:
        return succeed(None)
