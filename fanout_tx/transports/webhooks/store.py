"""Where subscriptions, pending deliveries and dead letters are kept.

The delivery engine keeps the working state in memory and writes through to a store; the
store is only read back at start-up (``load``) and for the dead-letter listing. MemoryStore
lives as long as the process; RedisStore (redis_store.py) survives restarts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from fanout_tx.transports.webhooks.model import Delivery, Subscription

# Dead letters kept per subscription, and bytes of dead letters (their JSON) kept for every
# subscription together ([webhooks] max_dead_letter_bytes); past either the oldest go.
DEAD_LETTERS_KEPT = 1000
MAX_DEAD_LETTER_BYTES = 64 * 1024 * 1024


class Dropped(NamedTuple):
    """Older dead letters one ``bury`` pushed out: the subscription's beyond
    DEAD_LETTERS_KEPT, and any subscription's oldest beyond max_dead_letter_bytes."""

    per_subscription: int = 0
    over_bytes: int = 0


def letter_json(letter: dict[str, Any]) -> str:
    """A dead letter as stored; its length is what max_dead_letter_bytes counts."""
    return json.dumps(letter)


@dataclass
class StoredState:
    subscriptions: list[Subscription] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)


class IWebhookStore(Interface):
    """Write-through persistence for the webhooks transport; every method returns a Deferred."""

    def load() -> Deferred[StoredState]:
        """StoredState: every subscription and every pending delivery."""

    def save_subscription(subscription: Subscription, limit: int = 0) -> Deferred[bool]:
        """Add or replace a subscription; True, or False when ``limit`` (when above 0)
        subscriptions are stored already and this one is new."""

    def delete_subscription(subscription_id: str) -> Deferred[None]:
        """Forget a subscription with its pending deliveries and dead letters."""

    def save_delivery(delivery: Delivery) -> Deferred[None]:
        """Add or replace a pending delivery (attempts, due time and last result included)."""

    def delete_delivery(subscription_id: str, webhook_id: str) -> Deferred[None]:
        """A delivery succeeded (or its subscription went away)."""

    def bury(delivery: Delivery) -> Deferred[Dropped]:
        """Move a delivery to its subscription's dead letters; fires with Dropped (newest
        DEAD_LETTERS_KEPT per subscription and max_dead_letter_bytes in all kept)."""

    def dead_letters(subscription_id: str) -> Deferred[list[dict[str, Any]]]:
        """List of dead-letter dicts, newest first."""

    def close() -> Deferred[None]:
        """Release connections."""


@implementer(IWebhookStore)
class MemoryStore:
    """In-process store: the default, when no ``[redis] url`` is configured."""

    def __init__(self, max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES) -> None:
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: dict[str, dict[str, Delivery]] = {}
        # Dead letters by subscription, then by sequence number (oldest first) with their
        # sizes; and every subscription's in one order, for the shared byte cap.
        self._dead: dict[str, dict[int, tuple[dict, int]]] = {}
        self._dead_order: dict[int, str] = {}
        self._dead_bytes = 0
        self._dead_seq = itertools.count()
        self._max_dead_bytes = max_dead_letter_bytes

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
        for seq, (_letter, size) in self._dead.pop(subscription_id, {}).items():
            del self._dead_order[seq]
            self._dead_bytes -= size
        return succeed(None)

    def save_delivery(self, delivery: Delivery) -> Deferred[None]:
        # A copy: the engine goes on changing its own object.
        group = self._deliveries.setdefault(delivery.subscription_id, {})
        group[delivery.webhook_id] = replace(delivery)
        return succeed(None)

    def delete_delivery(self, subscription_id: str, webhook_id: str) -> Deferred[None]:
        self._deliveries.get(subscription_id, {}).pop(webhook_id, None)
        return succeed(None)

    def bury(self, delivery: Delivery) -> Deferred[Dropped]:
        subscription_id = delivery.subscription_id
        self._deliveries.get(subscription_id, {}).pop(delivery.webhook_id, None)
        letter = delivery.dead_letter()
        seq, size = next(self._dead_seq), len(letter_json(letter))
        letters = self._dead.setdefault(subscription_id, {})
        letters[seq] = (letter, size)
        self._dead_order[seq] = subscription_id
        self._dead_bytes += size
        per_subscription = 0
        while len(letters) > DEAD_LETTERS_KEPT:
            self._forget(subscription_id, next(iter(letters)))
            per_subscription += 1
        over_bytes = 0
        while self._dead_bytes > self._max_dead_bytes:
            oldest, owner = next(iter(self._dead_order.items()))
            self._forget(owner, oldest)
            over_bytes += 1
        return succeed(Dropped(per_subscription, over_bytes))

    def _forget(self, subscription_id: str, seq: int) -> None:
        letters = self._dead[subscription_id]
        _letter, size = letters.pop(seq)
        del self._dead_order[seq]
        self._dead_bytes -= size
        if not letters:
            del self._dead[subscription_id]

    def dead_letters(self, subscription_id: str) -> Deferred[list[dict]]:
        letters = self._dead.get(subscription_id, {})
        return succeed([letter for letter, _size in reversed(letters.values())])

    def close(self) -> Deferred[None]:
        return succeed(None)
