"""A store shared by several instances (Redis): claims, and what the others changed.

Claims decide which instance makes a delivery's next attempt.

Every instance with webhooks enabled sees every item (the Redis bus), so each one queues the
same delivery under the same webhook-id. Before an attempt, an instance asks the claims
provider; only the instance granted the claim sends the request. A claim is a lease: it
expires on its own, so an instance that dies mid-attempt only delays the delivery until the
lease runs out and another instance (or the same one, restarted) claims it again.

A subscription created or deleted through one instance reaches the others when they next
read the stored subscriptions (the service does so periodically).

Without Redis there is nothing to share and no shared store: the engine attempts at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface

from fanout_tx.transports.webhooks.model import Delivery, Subscription


class Verdict(enum.Enum):
    CLAIMED = "claimed"  # this instance makes the attempt now
    BUSY = "busy"  # another instance is attempting it; ask again after ``wait``
    MOVED = "moved"  # another instance attempted it meanwhile; ``stored`` is its state now
    DONE = "done"  # delivered or a dead letter already (here or elsewhere): forget it
    UNSUBSCRIBED = "unsubscribed"  # the subscription was deleted (through another instance)


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    wait: float = 0.0
    stored: Delivery | None = None


class ISharedStore(Interface):
    """What a store shared by several instances adds; every method returns a Deferred."""

    def claim(delivery: Delivery) -> Deferred[Claim]:
        """A Claim for the delivery's next attempt (``delivery.attempts`` made so far).

        Granted only when no other instance holds it, it is still pending and its stored
        attempt count is the caller's; the lease lasts one attempt's timeout and a margin.
        The store's next write for the delivery (its outcome) ends the lease."""

    def release(delivery: Delivery) -> Deferred[None]:
        """Give up a claim without an outcome (an attempt abandoned at shutdown), so another
        instance may attempt the delivery at once rather than when the lease expires."""

    def subscriptions() -> Deferred[list[Subscription]]:
        """Every stored subscription (list)."""

    def pending(subscription_id: str) -> Deferred[list[Delivery]]:
        """Every pending delivery of one subscription (list)."""
