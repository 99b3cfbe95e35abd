"""The delivery engine: per-subscription queues, the retry schedule, dead letters.

Each subscription has its own queue with at most ``max_in_flight`` attempts running, so a
slow or dead endpoint only ever holds up its own deliveries. Every change of a delivery's
state is written through to the store as it happens; the engine's memory is the working
copy and the store is what a restarted server starts from. Time is the injected clock's.

With a shared store (Redis, several instances) each attempt is claimed first, so only one
instance sends it (shared.py). Stopping is a drain: no new attempts, the running ones may
finish and their outcomes are stored, within a bound; what is left stays pending in the store.
"""

from __future__ import annotations

import email.utils
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from fanout_tx.ops.logs import url_for_log
from fanout_tx.transports.webhooks.backlog import Backlog
from fanout_tx.transports.webhooks.client import IWebhookClient, Outcome
from fanout_tx.transports.webhooks.model import Delivery, Subscription
from fanout_tx.transports.webhooks.shared import Claim, ISharedStore, Verdict
from fanout_tx.transports.webhooks.signing import secret_key, signed_headers
from fanout_tx.transports.webhooks.store import Dropped, IWebhookStore

MAX_RETRY_AFTER = 3600.0
MAX_JITTER = 0.2
# Deliveries and bytes of deliveries waiting per subscription ([webhooks] max_pending,
# max_pending_bytes); past either the oldest waiting ones become dead letters (the freshest
# data matters most), so a dead endpoint holds a bounded amount. Past the bytes of every
# subscription's together (max_pending_bytes_total), the subscription with the most bytes
# waiting loses its oldest (backlog.py), so 10,000 dead endpoints cannot hold 10,000 times
# the per-subscription cap.
MAX_PENDING = 10_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
MAX_PENDING_BYTES_TOTAL = 512 * 1024 * 1024
# Each cap's key, with what its number counts in the dead letter's ``last_error``.
EVICTION_LOG_INTERVAL = 10.0  # seconds between two eviction summaries in the log

EVICTION_LIMITS = {
    "max_pending": "deliveries pending for the subscription",
    "max_pending_bytes": "bytes pending for the subscription",
    "max_pending_bytes_total": "bytes pending for all subscriptions",
}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # (isdigit alone takes "²")
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past any clock
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


# When a claim could not be asked for (Redis error), ask again after this many seconds.
CLAIM_RETRY = 1.0
# Held by another instance: ask again after its lease or this, whichever is sooner. The
# holder's attempt usually ends within milliseconds; waiting the whole lease would keep
# every such delivery in memory here for that long (rate x lease of them).
BUSY_RECHECK = 1.0

# How long a publish waits for its webhook deliveries to be stored before a 503 (SPEC B3's
# 5 s for noticing that Redis went away).
STORE_CONFIRM_TIMEOUT = 5.0

class _Queue:
    """One subscription's deliveries: ready, scheduled (timers) and in flight."""

    def __init__(self, subscription: Subscription, backlog: Backlog[_Queue]) -> None:
        self.subscription = subscription
        self.backlog = backlog
        self.key = secret_key(subscription.secret)
        self.ready: deque[Delivery] = deque()
        self.timers: dict[str, IDelayedCall] = {}
        self.in_flight: dict[str, tuple[Deferred[Any], Delivery]] = {}
        # Waiting for a claim's answer; these count against max_in_flight too.
        self.claiming: set[str] = set()
        # Every delivery not finished, oldest first, and the bytes they hold.
        self.pending: dict[str, Delivery] = {}
        self.pending_bytes = 0
        self.closed = False
        self.pumping = False

    def busy(self) -> int:
        return len(self.in_flight) + len(self.claiming)

    def add(self, delivery: Delivery) -> None:
        """Pending (again: a retry keeps its place among the oldest)."""
        previous = self.pending.get(delivery.webhook_id)
        delta = delivery.size - (previous.size if previous is not None else 0)
        self.pending[delivery.webhook_id] = delivery
        self.pending_bytes += delta
        self.backlog.count(delta)
        self.backlog.track(self)

    def discard(self, webhook_id: str) -> None:
        delivery = self.pending.pop(webhook_id, None)
        if delivery is not None:
            self.pending_bytes -= delivery.size
            self.backlog.count(-delivery.size)

    @property
    def waiting_bytes(self) -> int:
        """Pending bytes not being attempted (at most max_in_flight are)."""
        running = itertools.chain(self.in_flight, self.claiming)
        return self.pending_bytes - sum(self.pending[webhook_id].size for webhook_id in running
                                        if webhook_id in self.pending)

    def waiting(self) -> Iterator[Delivery]:
        """Pending deliveries not being attempted, oldest first: the ones a cap may evict."""
        for webhook_id, delivery in self.pending.items():
            if webhook_id not in self.in_flight and webhook_id not in self.claiming:
                yield delivery

    def oldest_waiting(self, room: int, max_bytes: int,
                       max_count: int) -> list[tuple[Delivery, str]]:
        """The oldest deliveries not being attempted whose removal makes room for one more
        of ``room`` bytes within ``max_count`` deliveries and ``max_bytes`` (as near as
        possible: attempts running stay); each with the cap that made it go."""
        excess_bytes = self.pending_bytes + room - max_bytes
        excess_count = len(self.pending) + 1 - max_count
        victims: list[tuple[Delivery, str]] = []
        for delivery in self.waiting():
            if excess_bytes <= 0 and excess_count <= 0:
                break
            victims.append((delivery, "max_pending" if excess_count > 0
                            else "max_pending_bytes"))
            excess_bytes -= delivery.size
            excess_count -= 1
        return victims

    def unschedule(self, delivery: Delivery) -> None:
        """Neither timer nor ready slot left for a delivery that is not running."""
        timer = self.timers.pop(delivery.webhook_id, None)
        if timer is not None:
            timer.cancel()
        elif delivery in self.ready:
            self.ready.remove(delivery)
        self.discard(delivery.webhook_id)

    def halt(self) -> None:
        """No new attempts: timers cancelled, ready deliveries dropped (stored meanwhile)."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.ready.clear()

    def close(self) -> None:
        self.closed = True
        self.halt()
        for attempt, _delivery in list(self.in_flight.values()):
            attempt.cancel()
        self.pending.clear()
        self.backlog.count(-self.pending_bytes)
        self.pending_bytes = 0


class DeliveryEngine:
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        client: IWebhookClient,
        store: IWebhookStore,
        retry_schedule: Sequence[float],
        max_in_flight: int,
        jitter: Callable[[], float] = random.random,
        max_pending: int = MAX_PENDING,
        claims: ISharedStore | None = None,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_pending_bytes_total: int = MAX_PENDING_BYTES_TOTAL,
    ) -> None:
        self._clock = clock
        self._client = client
        self._store = store
        self._claims = claims
        self._schedule = tuple(retry_schedule)
        self._max_in_flight = max(1, max_in_flight)
        # Called with a subscription id when its endpoint answers 410; set by the service.
        self.on_gone: Callable[[str], object] = lambda _subscription_id: None
        # Called with a subscription id a claim found deleted (through another instance).
        self.on_unsubscribed: Callable[[str], object] = lambda _subscription_id: None
        self._jitter = jitter
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_pending_bytes_total = max_pending_bytes_total
        self._caps = {"max_pending": max_pending, "max_pending_bytes": max_pending_bytes,
                      "max_pending_bytes_total": max_pending_bytes_total}
        self._queues: dict[str, _Queue] = {}
        self._backlog: Backlog[_Queue] = Backlog(self._queues.values)
        # One Deferred per store write not yet confirmed; each fires with True (stored) or
        # False (failed), so the publish that caused it can wait for it.
        self._unconfirmed: set[Deferred[bool]] = set()
        self.attempts: Counter[str] = Counter()  # success / failure
        self.dead_letters = 0
        # Of those, the ones pushed out by a cap, by the cap's key (EVICTION_LIMITS).
        self.evicted: Counter[str] = Counter()
        # Evictions come in storms (a dead target, a burst of publishes): one warn line
        # for the first, then at most one summary per EVICTION_LOG_INTERVAL.
        self._evictions_unlogged = 0
        self._eviction_logged_at: float | None = None
        # Older dead letters the store dropped to keep new ones, by the limit that made it.
        self.dead_letters_dropped: Counter[str] = Counter()
        # Set while draining: fires once no attempt or claim is running.
        self._idle: Deferred[None] | None = None

    # -- subscriptions --------------------------------------------------------------------

    def open(self, subscription: Subscription) -> None:
        self._queues[subscription.id] = _Queue(subscription, self._backlog)

    def close(self, subscription_id: str) -> None:
        """Forget a subscription's queue; its in-flight attempts are cancelled."""
        queue = self._queues.pop(subscription_id, None)
        if queue is not None:
            queue.close()
            self._check_idle()

    def stop(self) -> None:
        """Forget every queue at once, cancelling whatever is running."""
        for subscription_id in list(self._queues):
            self.close(subscription_id)

    def drain(self, attempts_timeout: float, writes_timeout: float) -> Deferred[None]:
        """Stop gracefully: start nothing new, let running attempts finish for at most
        ``attempts_timeout`` seconds and their outcomes be stored for at most
        ``writes_timeout`` more. An attempt still running then is cancelled and its claim
        released; like every delivery not attempted, it stays pending in the store (with
        Redis, for the next start or another instance). Ends with every queue forgotten."""
        self._idle = Deferred()
        for queue in self._queues.values():
            queue.halt()
        self._check_idle()
        return Deferred.fromCoroutine(self._drain(attempts_timeout, writes_timeout))

    async def _drain(self, attempts_timeout: float, writes_timeout: float) -> None:
        assert self._idle is not None
        try:
            await self._idle.addTimeout(attempts_timeout, self._clock)
        except TimeoutError:
            self._abandon()
        await self.writes_confirmed(writes_timeout)
        self._idle = None
        self.stop()

    def _abandon(self) -> None:
        running = [(queue, webhook_id) for queue in self._queues.values()
                   for webhook_id in queue.in_flight]
        self._log.warn("webhooks: {count} attempts still running at shutdown are left "
                       "pending", count=len(running))
        for queue, webhook_id in running:
            attempt, delivery = queue.in_flight.pop(webhook_id)
            attempt.cancel()
            if self._claims is not None:
                self._written(self._claims.release(delivery), delivery)

    def _check_idle(self) -> None:
        if (self._idle is not None and not self._idle.called
                and not any(queue.busy() for queue in self._queues.values())):
            self._idle.callback(None)

    def pending_count(self, subscription_id: str) -> int:
        queue = self._queues.get(subscription_id)
        return len(queue.pending) if queue is not None else 0

    def pending_bytes(self) -> int:
        """Bytes held by pending deliveries, every subscription's together."""
        return self._backlog.total

    # -- deliveries -----------------------------------------------------------------------

    def enqueue(self, delivery: Delivery) -> None:
        """A new delivery: saved, then attempted after the schedule's first delay."""
        queue = self._queues.get(delivery.subscription_id)
        if queue is None or delivery.webhook_id in queue.pending:
            return  # a publisher's retry of an item still pending here
        if not self._make_room(queue, delivery):
            return
        delivery.due = self._clock.seconds() + self._delay(0)
        self._written(self._store.save_delivery(delivery), delivery)
        self._schedule_attempt(queue, delivery)

    def restore(self, delivery: Delivery) -> None:
        """A delivery read back from the store at start-up: attempted at its due time."""
        queue = self._queues.get(delivery.subscription_id)
        if (queue is not None and delivery.webhook_id not in queue.pending
                and self._make_room(queue, delivery)):
            self._schedule_attempt(queue, delivery)

    def _make_room(self, queue: _Queue, delivery: Delivery) -> bool:
        """Within max_pending and max_pending_bytes with ``delivery`` added, then within
        max_pending_bytes_total: the oldest waiting deliveries (of this subscription, then
        of whichever has the most waiting) become dead letters. False (and ``delivery`` a dead
        letter) when it alone is larger, or every pending one is being attempted."""
        if delivery.size > self._max_pending_bytes:
            self._evict(delivery, "max_pending_bytes")
            return False
        for victim, limit in queue.oldest_waiting(delivery.size, self._max_pending_bytes,
                                                  self._max_pending):
            queue.unschedule(victim)
            self._evict(victim, limit)
        if len(queue.pending) >= self._max_pending:
            self._evict(delivery, "max_pending")
            return False
        if not self._make_room_total(delivery.size):
            self._evict(delivery, "max_pending_bytes_total")
            return False
        return True

    def _make_room_total(self, room: int) -> bool:
        """Within max_pending_bytes_total with ``room`` more bytes: the largest backlogs'
        oldest waiting deliveries become dead letters; False when that is not enough
        (what is left is being attempted), or at once when ``room`` alone is larger."""
        if room > self._max_pending_bytes_total:
            return False
        excess = self._backlog.total + room - self._max_pending_bytes_total
        while excess > 0:
            largest = self._backlog.pop_largest()
            if largest is None:
                return False
            victim = next(largest.waiting())
            largest.unschedule(victim)
            self._evict(victim, "max_pending_bytes_total")
            excess -= victim.size
            self._backlog.track(largest)
        return True

    def _evict(self, delivery: Delivery, limit: str) -> None:
        """``delivery`` a dead letter because of ``limit`` (a key of EVICTION_LIMITS)."""
        self.evicted[limit] += 1
        delivery.last_error = (f"evicted: over {limit} ({self._caps[limit]} "
                               f"{EVICTION_LIMITS[limit]})")
        self._bury(delivery, log=False)
        self._evictions_unlogged += 1
        now = self._clock.seconds()
        if (self._eviction_logged_at is None
                or now - self._eviction_logged_at >= EVICTION_LOG_INTERVAL):
            self._log.warn(
                "{count} webhook deliveries evicted as dead letters since the last such line "
                "(latest: {webhook_id} to {url}, {error}); every one is counted in "
                "fanout_webhook_evicted_total, this line repeats {interval:.0f}s at the "
                "earliest", count=self._evictions_unlogged, webhook_id=delivery.webhook_id,
                url=url_for_log(delivery.url, path=False), error=delivery.last_error,
                interval=EVICTION_LOG_INTERVAL)
            self._evictions_unlogged = 0
            self._eviction_logged_at = now

    def _delay(self, attempt_index: int) -> float:
        """The schedule's delay before an attempt, stretched by 0-20 %, never shortened."""
        return self._schedule[attempt_index] * (1.0 + MAX_JITTER * self._jitter())

    def _schedule_attempt(self, queue: _Queue, delivery: Delivery) -> None:
        queue.add(delivery)
        if self._idle is not None:
            return  # draining: it is in the store with its due time
        wait = delivery.due - self._clock.seconds()
        if wait > 0:
            queue.timers[delivery.webhook_id] = self._clock.callLater(
                wait, self._due, queue, delivery
            )
        else:
            queue.ready.append(delivery)
            self._pump(queue)

    def _due(self, queue: _Queue, delivery: Delivery) -> None:
        del queue.timers[delivery.webhook_id]
        queue.ready.append(delivery)
        self._pump(queue)

    def _pump(self, queue: _Queue) -> None:
        if queue.pumping:  # an attempt that finished at once; the running loop goes on
            return
        queue.pumping = True
        try:
            while queue.ready and queue.busy() < self._max_in_flight:
                self._start(queue, queue.ready.popleft())
        finally:
            queue.pumping = False

    def _start(self, queue: _Queue, delivery: Delivery) -> None:
        if self._claims is None:
            self._attempt(queue, delivery)
            return
        queue.claiming.add(delivery.webhook_id)
        claiming = self._claims.claim(delivery)
        claiming.addBoth(self._claimed, queue, delivery)
        claiming.addErrback(self._unexpected)

    def _claimed(self, claim: Claim | Failure, queue: _Queue, delivery: Delivery) -> None:
        queue.claiming.discard(delivery.webhook_id)
        if queue.closed or self._idle is not None:
            if isinstance(claim, Claim) and claim.verdict is Verdict.CLAIMED:
                assert self._claims is not None
                self._written(self._claims.release(delivery), delivery)
            self._check_idle()
            return
        if isinstance(claim, Failure):
            self._log.error("could not claim webhook {webhook_id}: {error}",
                            webhook_id=delivery.webhook_id, error=claim.getErrorMessage())
            self._reschedule(queue, delivery, CLAIM_RETRY)
        elif claim.verdict is Verdict.CLAIMED:
            self._attempt(queue, delivery)
        elif claim.verdict is Verdict.BUSY:
            # Another instance's attempt: its outcome (or the lease's end) comes first.
            self._reschedule(queue, delivery, min(claim.wait, BUSY_RECHECK))
        elif claim.verdict is Verdict.MOVED:
            assert claim.stored is not None
            self._schedule_attempt(queue, claim.stored)
        else:  # DONE or UNSUBSCRIBED: nothing left to do here
            queue.discard(delivery.webhook_id)
            if claim.verdict is Verdict.UNSUBSCRIBED:
                self.on_unsubscribed(delivery.subscription_id)
        self._pump(queue)

    def _reschedule(self, queue: _Queue, delivery: Delivery, wait: float) -> None:
        delivery.due = self._clock.seconds() + wait
        self._schedule_attempt(queue, delivery)

    def _attempt(self, queue: _Queue, delivery: Delivery) -> None:
        delivery.attempts += 1
        timestamp = int(self._clock.seconds())
        headers = [
            *delivery.headers,
            *signed_headers(queue.key, delivery.webhook_id, timestamp, delivery.body),
        ]
        attempt = self._client.request(delivery.method, delivery.url, headers, delivery.body)
        queue.in_flight[delivery.webhook_id] = (attempt, delivery)
        attempt.addCallback(self._finished, queue, delivery)
        attempt.addErrback(self._unexpected)

    def _unexpected(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # cancelled: subscription gone, or shutdown
            self._log.failure("webhook attempt handling failed", failure)

    def _finished(self, outcome: Outcome, queue: _Queue, delivery: Delivery) -> None:
        if queue.in_flight.pop(delivery.webhook_id, None) is None or queue.closed:
            return  # abandoned at shutdown, or the subscription went away
        self._record(outcome, queue, delivery)
        self._pump(queue)
        self._check_idle()

    def _record(self, outcome: Outcome, queue: _Queue, delivery: Delivery) -> None:
        subscription_id = delivery.subscription_id
        if outcome.ok:
            self.attempts["success"] += 1
            queue.discard(delivery.webhook_id)
            self._written(self._store.delete_delivery(subscription_id, delivery.webhook_id),
                          delivery)
        else:
            self.attempts["failure"] += 1
            delivery.last_status = outcome.status
            delivery.last_error = outcome.error or f"HTTP {outcome.status}"
            self._log.debug(
                "webhook {webhook_id} to {url} failed (attempt {attempts}): {error}",
                webhook_id=delivery.webhook_id, url=url_for_log(delivery.url, path=False),
                attempts=delivery.attempts,
                error=delivery.last_error,
            )
            if outcome.status == 410:
                self.on_gone(subscription_id)
                return
            self._retry_or_bury(queue, delivery, outcome)

    def _retry_or_bury(self, queue: _Queue, delivery: Delivery, outcome: Outcome) -> None:
        if delivery.attempts >= len(self._schedule):
            queue.discard(delivery.webhook_id)
            self._bury(delivery)
            return
        now = self._clock.seconds()
        wait = self._delay(delivery.attempts)
        asked = parse_retry_after(outcome.retry_after, now)
        if asked is not None:
            wait = max(wait, min(asked, MAX_RETRY_AFTER))
        delivery.due = now + wait
        self._written(self._store.save_delivery(delivery), delivery)
        self._schedule_attempt(queue, delivery)

    def _bury(self, delivery: Delivery, log: bool = True) -> None:
        self.dead_letters += 1
        if log:
            self._log.warn(
                "webhook {webhook_id} to {url} is a dead letter after {attempts} attempts: "
                "{error}", webhook_id=delivery.webhook_id,
                url=url_for_log(delivery.url, path=False), attempts=delivery.attempts,
                error=delivery.last_error,
            )
        burying = self._store.bury(delivery)
        burying.addCallback(self._count_dropped)
        self._written(burying, delivery)

    def _count_dropped(self, dropped: Dropped) -> Dropped:
        self.dead_letters_dropped["max_dead_letters"] += dropped.per_subscription
        self.dead_letters_dropped["max_dead_letter_bytes"] += dropped.over_bytes
        return dropped

    def _written(self, write: Deferred[Any], delivery: Delivery) -> None:
        confirmation: Deferred[bool] = Deferred()
        self._unconfirmed.add(confirmation)

        def settled(result: object) -> None:
            self._unconfirmed.discard(confirmation)
            if isinstance(result, Failure):
                self._log.error(
                    "could not store webhook {webhook_id}: {error}",
                    webhook_id=delivery.webhook_id, error=result.getErrorMessage(),
                )
            confirmation.callback(not isinstance(result, Failure))

        write.addBoth(settled)

    def writes_confirmed(self, timeout: float = STORE_CONFIRM_TIMEOUT) -> Deferred[bool]:
        """Fires once every store write issued so far is settled: True when all were stored,
        False when one failed or ``timeout`` passed first (Redis away). The publish API waits
        for it, so a publish is answered only after its webhook deliveries are durable
        (SPEC B2), and gets a 503 rather than hanging while Redis is away."""
        pending = list(self._unconfirmed)
        if not pending:
            return succeed(True)
        waiter: Deferred[bool] = Deferred()
        outcomes: list[bool] = []

        def settle(stored: bool) -> bool:
            outcomes.append(stored)
            if len(outcomes) == len(pending) and not waiter.called:
                timer.cancel()
                waiter.callback(all(outcomes))
            return stored

        def expire() -> None:
            if not waiter.called:
                self._log.warn("webhook deliveries not confirmed by the store in {timeout}s",
                               timeout=timeout)
                waiter.callback(False)

        timer = self._clock.callLater(timeout, expire)
        for confirmation in pending:
            confirmation.addCallback(settle)
        return waiter
