"""The delivery engine on a task.Clock with a fake client: schedule, jitter, Retry-After,
410, dead letters, the in-flight cap, signing on every attempt, claims (several instances)
and the drain at shutdown."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override
from zope.interface.verify import verifyObject

from fanout_tx.transports.webhooks.client import IWebhookClient, Outcome
from fanout_tx.transports.webhooks.delivery import (
    BUSY_RECHECK,
    CLAIM_RETRY,
    EVICTION_LOG_INTERVAL,
    DeliveryEngine,
    _Queue,
    parse_retry_after,
)
from fanout_tx.transports.webhooks.model import Delivery, Subscription
from fanout_tx.transports.webhooks.shared import Claim, ISharedStore, Verdict
from fanout_tx.transports.webhooks.signing import generate_secret
from fanout_tx.transports.webhooks.store import MemoryStore
from tests.support.webhooks import FakeClaims, FakeWebhookClient

NOW = 1_800_000_000.0
SCHEDULE = (0, 5, 300, 1800)
OK = Outcome(204)
FAIL = Outcome(500)


class _EngineCase(SynchronousTestCase):
    """A DeliveryEngine on a fake clock, client and store (and claims, when a subclass
    gives them)."""

    claims: FakeClaims | None = None

    @override
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.client = FakeWebhookClient()
        self.store = MemoryStore()
        self.jitter = 0.0
        self.engine = DeliveryEngine(self.clock, self.client, self.store, SCHEDULE,
                                     max_in_flight=2, jitter=lambda: self.jitter,
                                     claims=self.claims)


class EngineTests(_EngineCase):
    @override
    def setUp(self) -> None:
        super().setUp()
        self.gone: list[str] = []
        self.engine.on_gone = self.gone.append
        self.subscription = Subscription("sub_1", "http://hooks.example/x", ("c",),
                                         generate_secret())
        self.engine.open(self.subscription)

    def delivery(self, webhook_id: str = "msg_1") -> Delivery:
        return Delivery(webhook_id, "sub_1", "c", "POST", "http://hooks.example/x",
                        (("Content-Type", "text/plain"),), b"hello")

    def pending(self) -> list[Delivery]:
        return self.successResultOf(self.store.load()).deliveries

    def dead(self) -> list[dict]:
        return self.successResultOf(self.store.dead_letters("sub_1"))

    def answer(self, index: int, outcome: Outcome) -> None:
        self.client.sent[index].result.callback(outcome)

    def test_fake_client_provides_the_interface(self) -> None:
        """The fake implements IWebhookClient like the real client."""
        self.assertTrue(verifyObject(IWebhookClient, self.client))

    def test_first_attempt_is_immediate_and_signed(self) -> None:
        """With a 0 s first delay the attempt goes out at once, carrying the three
        Standard Webhooks headers, which check out with the subscription's secret."""
        self.engine.enqueue(self.delivery())
        self.assertEqual(len(self.client.sent), 1)
        sent = self.client.sent[0]
        self.assertEqual((sent.method, sent.url, sent.body),
                         ("POST", "http://hooks.example/x", b"hello"))
        self.assertEqual(sent.header("webhook-id"), "msg_1")
        self.assertEqual(sent.header("webhook-timestamp"), str(int(NOW)))
        key = base64.b64decode(self.subscription.secret[len("whsec_"):])
        mac = hmac.new(key, f"msg_1.{int(NOW)}.hello".encode(), hashlib.sha256).digest()
        self.assertEqual(sent.header("webhook-signature"), "v1," + base64.b64encode(mac).decode())
        self.answer(0, OK)
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.engine.attempts["success"], 1)

    def test_writes_confirmed_waits_for_the_store(self) -> None:
        """``writes_confirmed`` fires True once the delivery's store write is confirmed, and
        False when a write failed, so the publish API can answer 503."""
        writes: list[Deferred[None]] = []
        self.store.save_delivery = lambda delivery: writes.append(Deferred()) or writes[-1]
        self.engine.enqueue(self.delivery("msg_a"))
        confirmed = self.engine.writes_confirmed()
        self.assertNoResult(confirmed)
        writes[0].callback(None)
        self.assertIs(self.successResultOf(confirmed), True)
        self.assertIs(self.successResultOf(self.engine.writes_confirmed()), True)

        self.engine.enqueue(self.delivery("msg_b"))
        confirmed = self.engine.writes_confirmed()
        writes[1].errback(ConnectionError("redis went away"))
        self.assertIs(self.successResultOf(confirmed), False)

        self.engine.enqueue(self.delivery("msg_c"))
        confirmed = self.engine.writes_confirmed(timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(confirmed)
        self.clock.advance(0.2)
        self.assertIs(self.successResultOf(confirmed), False)
        writes[2].callback(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retries_follow_the_schedule_with_the_same_id(self) -> None:
        """Each failure waits the schedule's next delay; every retry keeps webhook-id but
        signs a fresh timestamp; the delivery is stored with its due time meanwhile."""
        self.engine.enqueue(self.delivery())
        self.answer(0, FAIL)
        self.assertEqual(self.pending()[0].due, NOW + 5)
        self.clock.advance(4.9)
        self.assertEqual(len(self.client.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.client.sent), 2)
        self.assertEqual(self.client.sent[1].header("webhook-id"), "msg_1")
        self.assertEqual(self.client.sent[1].header("webhook-timestamp"), str(int(NOW + 5)))
        self.answer(1, Outcome(None, error="connection refused"))
        self.clock.advance(299.9)
        self.assertEqual(len(self.client.sent), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.client.sent), 3)
        self.answer(2, OK)
        self.assertEqual((self.pending(), self.dead()), ([], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_jitter_stretches_by_up_to_20_percent(self) -> None:
        """The random factor stretches a delay by 0-20 %, never shortens it."""
        self.jitter = 0.999
        self.engine.enqueue(self.delivery())
        self.answer(0, FAIL)
        self.clock.advance(5.99)
        self.assertEqual(len(self.client.sent), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.client.sent), 2)

    def test_dead_letter_after_the_last_attempt(self) -> None:
        """N schedule entries = N attempts; then the delivery is a dead letter with its
        attempts, last status and error, and nothing stays scheduled."""
        self.engine.enqueue(self.delivery())
        for index, wait in enumerate((5, 300, 1800)):
            self.answer(index, FAIL)
            self.clock.advance(wait)
        self.answer(3, Outcome(503))
        self.assertEqual(len(self.client.sent), 4)
        self.assertEqual(self.dead(), [{"webhook-id": "msg_1", "channel": "c", "attempts": 4,
                                        "last_status": 503, "last_error": "HTTP 503"}])
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.engine.dead_letters, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_answer_is_recorded_with_null_status(self) -> None:
        """A delivery that never got an HTTP answer has last_status None and the reason."""
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1)
        engine.open(self.subscription)
        engine.enqueue(self.delivery())
        self.answer(0, Outcome(None, error="timed out after 10s"))
        self.assertEqual(self.dead()[0]["last_status"], None)
        self.assertEqual(self.dead()[0]["last_error"], "timed out after 10s")

    def test_retry_after_seconds_delays_the_next_attempt(self) -> None:
        """Retry-After in seconds pushes the next attempt later than the schedule."""
        self.engine.enqueue(self.delivery())
        self.answer(0, Outcome(429, retry_after="120"))
        self.clock.advance(119)
        self.assertEqual(len(self.client.sent), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.client.sent), 2)

    def test_retry_after_never_shortens_the_schedule(self) -> None:
        """A Retry-After shorter than the schedule's delay changes nothing."""
        self.engine.enqueue(self.delivery())
        self.answer(0, Outcome(503, retry_after="1"))
        self.clock.advance(4.9)
        self.assertEqual(len(self.client.sent), 1)

    def test_retry_after_date_and_cap(self) -> None:
        """Retry-After as an HTTP date counts from the clock; anything over 1 h is capped."""
        date = email.utils.formatdate(NOW + 600, usegmt=True)
        self.assertEqual(parse_retry_after(date, NOW), 600)
        self.assertEqual(parse_retry_after("garbage", NOW), None)
        # what a receiver may send that is neither: ignored, not raised into the engine
        self.assertEqual(parse_retry_after("\xb2", NOW), None)  # "²".isdigit() is True
        self.assertEqual(parse_retry_after("Sun, Feb 99999999999 99999999999 24:00:00 GMT",
                                           NOW), None)
        self.engine.enqueue(self.delivery())
        self.answer(0, Outcome(503, retry_after="86400"))
        self.assertEqual(self.pending()[0].due, NOW + 3600)

    def test_410_reports_the_subscription_gone(self) -> None:
        """A 410 answer calls on_gone with the subscription id and schedules nothing."""
        self.engine.enqueue(self.delivery())
        self.answer(0, Outcome(410))
        self.assertEqual(self.gone, ["sub_1"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_in_flight_cap(self) -> None:
        """At most max_in_flight attempts run at once per subscription; the next one starts
        as soon as one finishes."""
        for n in range(5):
            self.engine.enqueue(self.delivery(f"msg_{n}"))
        self.assertEqual(len(self.client.sent), 2)
        self.answer(0, OK)
        self.assertEqual(len(self.client.sent), 3)
        self.assertEqual(self.client.sent[2].header("webhook-id"), "msg_2")

    def test_synchronous_answers_do_not_recurse(self) -> None:
        """A client that answers at once drains a long queue without deep recursion."""
        client = FakeWebhookClient()
        engine = DeliveryEngine(self.clock, client, self.store, SCHEDULE, 1)
        engine.open(self.subscription)
        original = client.request

        def instant(*args: object) -> object:
            return original(*args).callback(OK) or client.sent[-1].result

        client.request = instant  # type: ignore[method-assign]
        for n in range(3000):
            engine.enqueue(self.delivery(f"msg_{n}"))
        self.assertEqual((len(client.sent), engine.attempts["success"]), (3000, 3000))

    def test_repeated_webhook_id_is_ignored_while_pending(self) -> None:
        """A publisher retrying the same item (same webhook-id) does not double it."""
        self.engine.enqueue(self.delivery())
        self.engine.enqueue(self.delivery())
        self.assertEqual(len(self.client.sent), 1)

    def test_closing_cancels_timers_and_attempts(self) -> None:
        """Closing a subscription's queue cancels its retry timers and in-flight attempts;
        a late answer changes nothing."""
        self.engine.enqueue(self.delivery("msg_a"))
        self.engine.enqueue(self.delivery("msg_b"))
        self.answer(0, FAIL)
        self.engine.close("sub_1")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.client.sent[1].result.called)  # cancelled, quietly
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.engine.attempts["failure"], 1)

    def test_restore_attempts_at_the_stored_due_time(self) -> None:
        """A delivery read back from the store waits until its due time, then goes out."""
        delivery = self.delivery()
        delivery.attempts, delivery.due = 1, NOW + 30
        self.engine.restore(delivery)
        self.clock.advance(29)
        self.assertEqual(len(self.client.sent), 0)
        self.clock.advance(1)
        self.assertEqual(len(self.client.sent), 1)
        self.answer(0, FAIL)
        self.assertEqual(self.pending()[0].attempts, 2)

    def test_full_queue_evicts_the_oldest_waiting(self) -> None:
        """Past max_pending deliveries the oldest one not being attempted becomes a dead
        letter, as past max_pending_bytes: the newest are kept; restored ones count too.
        With every pending one being attempted, the new one is the dead letter."""
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1, max_pending=3)
        engine.open(self.subscription)
        for n in range(5):
            engine.enqueue(self.delivery(f"msg_{n}"))
        engine.restore(self.delivery("msg_5"))
        self.assertEqual(engine.pending_count("sub_1"), 3)
        self.assertEqual([d["webhook-id"] for d in self.dead()], ["msg_3", "msg_2", "msg_1"])
        self.assertTrue(self.dead()[0]["last_error"].startswith("evicted: over max_pending ("))
        self.assertEqual((engine.evicted, engine.dead_letters), ({"max_pending": 3}, 3))
        engine.stop()
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1, max_pending=1)
        engine.open(self.subscription)
        engine.enqueue(self.delivery("msg_a"))
        engine.enqueue(self.delivery("msg_b"))  # msg_a is being attempted
        self.assertEqual(self.dead()[0]["webhook-id"], "msg_b")
        engine.stop()

    def test_an_eviction_storm_logs_one_line_per_interval(self) -> None:
        """A dead target under a burst of publishes: the first eviction is logged, the rest
        are summed into at most one warn line per EVICTION_LOG_INTERVAL (metrics count each)."""
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_level") is LogLevel.warn and "evicted" in event["log_format"]:
                warnings.append(event["log_format"].format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1, max_pending=1)
        engine.open(self.subscription)
        for n in range(200):
            engine.enqueue(self.delivery(f"msg_{n}"))
        self.assertEqual(engine.evicted["max_pending"], 199)
        self.assertEqual(len(warnings), 1)
        self.assertTrue(warnings[0].startswith("1 webhook deliveries evicted"))
        self.clock.advance(EVICTION_LOG_INTERVAL)
        engine.enqueue(self.delivery("msg_last"))
        self.assertEqual(len(warnings), 2)
        self.assertTrue(warnings[1].startswith("199 webhook deliveries evicted"))
        engine.stop()

    def test_pending_bytes_evict_the_oldest_waiting(self) -> None:
        """Past max_pending_bytes the oldest deliveries not being attempted become dead
        letters (their timers cancelled), a retry keeps its place among the oldest, one
        larger than the cap alone is a dead letter at once, and restored ones count too."""
        size = self.delivery().size
        engine = DeliveryEngine(self.clock, self.client, self.store, (0, 10), 1,
                                max_pending_bytes=3 * size)
        engine.open(self.subscription)
        for n in range(3):
            engine.enqueue(self.delivery(f"msg_{n}"))
        self.assertEqual(len(self.client.sent), 1)  # msg_0 in flight, msg_1/2 ready
        self.client.sent[0].result.callback(FAIL)  # msg_0 waits for its retry
        self.assertEqual(len(self.client.sent), 2)  # msg_1 in flight
        engine.enqueue(self.delivery("msg_3"))  # msg_0 is the oldest not in flight
        self.assertEqual([d["webhook-id"] for d in self.dead()], ["msg_0"])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # msg_0's retry cancelled
        big = self.delivery("msg_big")
        big.body = b"x" * 3 * size
        engine.enqueue(big)
        engine.restore(self.delivery("msg_4"))
        self.assertEqual([d["webhook-id"] for d in self.dead()], ["msg_2", "msg_big", "msg_0"])
        self.assertEqual(engine.evicted, {"max_pending_bytes": 3})
        self.assertEqual(engine.pending_bytes(), 3 * size)
        self.assertEqual(engine.pending_count("sub_1"), 3)
        engine.stop()

    def test_total_cap_evicts_from_the_largest_backlog(self) -> None:
        """Past max_pending_bytes_total the subscription with the most bytes waiting loses
        its oldest waiting delivery (attempts running stay), whichever subscription the new
        one is for; the total stays within the cap, a delivery larger than the cap alone is
        a dead letter at once, and a closed subscription's bytes leave the total."""
        size = self.delivery().size
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1,
                                max_pending_bytes_total=5 * size)
        for subscription_id in ("sub_1", "sub_2"):
            engine.open(Subscription(subscription_id, "http://hooks.example/x", ("c",),
                                     generate_secret()))
        for n in range(4):  # msg_0 being attempted, msg_1..3 waiting
            engine.enqueue(self.delivery(f"msg_{n}"))
        small = Delivery("small_0", "sub_2", "c", "POST", "http://hooks.example/x",
                         (("Content-Type", "text/plain"),), b"hello")
        engine.enqueue(small)
        self.assertEqual(self.dead(), [])
        for n in range(1, 3):
            small = Delivery(f"small_{n}", "sub_2", "c", "POST", "http://hooks.example/x",
                             (("Content-Type", "text/plain"),), b"hello")
            engine.enqueue(small)  # sub_1 holds more: its oldest waiting go
        self.assertEqual([d["webhook-id"] for d in self.dead()], ["msg_2", "msg_1"])
        self.assertTrue(self.dead()[0]["last_error"].startswith(
            f"evicted: over max_pending_bytes_total ({5 * size} bytes pending for all "))
        self.assertEqual(engine.pending_count("sub_1"), 2)
        self.assertEqual(engine.pending_count("sub_2"), 3)
        self.assertEqual(engine.pending_bytes(), 5 * size)
        engine.enqueue(self.delivery("msg_4"))  # sub_2 holds more now; small_0 is running
        self.assertEqual(self.successResultOf(self.store.dead_letters("sub_2"))[0]["webhook-id"],
                         "small_1")
        big = self.delivery("msg_big")
        big.body = b"x" * 5 * size
        engine.enqueue(big)
        self.assertEqual(self.dead()[0]["webhook-id"], "msg_big")
        self.assertEqual(engine.evicted, {"max_pending_bytes_total": 4})
        self.assertEqual(engine.pending_bytes(), 5 * size)
        engine.close("sub_2")
        self.assertEqual(engine.pending_bytes(), 3 * size)
        engine.stop()
        self.assertEqual(engine.pending_bytes(), 0)

    def test_total_cap_with_only_attempts_running_refuses_the_new_one(self) -> None:
        """When what holds the total is all being attempted, the new delivery is the dead
        letter, and the running attempts are untouched."""
        size = self.delivery().size
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1,
                                max_pending_bytes_total=size)
        engine.open(self.subscription)
        engine.enqueue(self.delivery("msg_a"))
        engine.enqueue(self.delivery("msg_b"))
        self.assertEqual([d["webhook-id"] for d in self.dead()], ["msg_b"])
        self.assertEqual(len(self.client.sent), 1)
        self.assertEqual(engine.pending_count("sub_1"), 1)
        engine.stop()

    def test_total_cap_costs_no_scan_of_the_subscriptions(self) -> None:
        """1,000 subscriptions, each with an attempt running that holds the total over the
        cap: each further delivery is a dead letter after looking at a few queues, not at
        all of them (their waiting bytes are read a bounded number of times)."""
        size = self.delivery().size
        engine = DeliveryEngine(self.clock, self.client, self.store, (0,), 1,
                                max_pending_bytes_total=500 * size)
        for n in range(1000):
            engine.open(Subscription(f"sub_{n}", "http://hooks.example/x", ("c",),
                                     generate_secret()))
            engine.enqueue(Delivery(f"msg_{n}", f"sub_{n}", "c", "POST", "http://hooks.example/x",
                                    (("Content-Type", "text/plain"),), b"hello"))
        self.assertEqual(engine.pending_bytes(), 500 * size)
        reads = []
        waiting_bytes = _Queue.waiting_bytes
        self.patch(_Queue, "waiting_bytes", property(
            lambda queue: reads.append(queue) or waiting_bytes.fget(queue)))
        for n in range(100):
            engine.enqueue(Delivery(f"late_{n}", f"sub_{n}", "c", "POST",
                                    "http://hooks.example/x", (), b"hello"))
        self.assertEqual(engine.evicted["max_pending_bytes_total"], 600)
        self.assertLess(len(reads), 1000)
        engine.stop()


class _EngineWithClaims(_EngineCase):
    """An engine whose attempts are claimed first, the claims answered by the test."""

    @override
    def setUp(self) -> None:
        self.claims = FakeClaims()
        super().setUp()
        self.unsubscribed: list[str] = []
        self.engine.on_unsubscribed = self.unsubscribed.append
        self.engine.open(Subscription("sub_1", "http://hooks.example/x", ("c",),
                                      generate_secret()))

    def delivery(self, webhook_id: str = "msg_1") -> Delivery:
        return Delivery(webhook_id, "sub_1", "c", "POST", "http://hooks.example/x", (),
                        b"hello")

    def grant(self, index: int, claim: Claim) -> None:
        self.claims.asked[index][1].callback(claim)


class ClaimTests(_EngineWithClaims):
    def test_shared_store_fake_provides_the_interface(self) -> None:
        """The fake implements ISharedStore like RedisStore."""
        self.assertTrue(verifyObject(ISharedStore, self.claims))

    def test_attempt_waits_for_its_claim(self) -> None:
        """Nothing is sent before the claim is granted; then the attempt goes out."""
        self.engine.enqueue(self.delivery())
        self.assertEqual((len(self.claims.asked), len(self.client.sent)), (1, 0))
        self.assertEqual(self.claims.asked[0][0].attempts, 0)
        self.grant(0, Claim(Verdict.CLAIMED))
        self.assertEqual(len(self.client.sent), 1)
        self.client.sent[0].result.callback(OK)
        self.assertEqual(self.successResultOf(self.store.load()).deliveries, [])

    def test_busy_asks_again_after_the_lease(self) -> None:
        """Another instance holds the claim: ask again when its lease would end, or after
        BUSY_RECHECK when that is sooner, and send nothing meanwhile."""
        self.engine.enqueue(self.delivery())
        self.grant(0, Claim(Verdict.BUSY, wait=0.5))
        self.clock.advance(0.49)
        self.assertEqual((len(self.claims.asked), len(self.client.sent)), (1, 0))
        self.clock.advance(0.01)
        self.assertEqual(len(self.claims.asked), 2)
        self.grant(1, Claim(Verdict.BUSY, wait=15.0))
        self.clock.advance(BUSY_RECHECK)
        self.assertEqual(len(self.claims.asked), 3)
        self.grant(2, Claim(Verdict.CLAIMED))
        self.assertEqual(len(self.client.sent), 1)

    def test_moved_follows_the_stored_schedule(self) -> None:
        """Another instance made the attempt and scheduled a retry: this one takes the
        stored attempt count and due time, and claims again then."""
        self.engine.enqueue(self.delivery())
        stored = self.delivery()
        stored.attempts, stored.due = 1, NOW + 5
        self.grant(0, Claim(Verdict.MOVED, stored=stored))
        self.clock.advance(4.9)
        self.assertEqual(len(self.claims.asked), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.claims.asked[1][0].attempts, 1)
        self.grant(1, Claim(Verdict.CLAIMED))
        self.client.sent[0].result.callback(FAIL)
        self.assertEqual(self.successResultOf(self.store.load()).deliveries[0].attempts, 2)

    def test_done_and_unsubscribed_drop_the_delivery(self) -> None:
        """Delivered elsewhere: forgotten. Subscription deleted elsewhere: forgotten and
        reported. Neither is sent nor scheduled."""
        self.engine.enqueue(self.delivery("msg_a"))
        self.engine.enqueue(self.delivery("msg_b"))
        self.grant(0, Claim(Verdict.DONE))
        self.grant(1, Claim(Verdict.UNSUBSCRIBED))
        self.assertEqual(self.engine.pending_count("sub_1"), 0)
        self.assertEqual(self.unsubscribed, ["sub_1"])
        self.assertEqual((self.client.sent, self.clock.getDelayedCalls()), ([], []))

    def test_claim_error_is_retried(self) -> None:
        """Redis could not answer the claim: logged, asked again after CLAIM_RETRY."""
        self.engine.enqueue(self.delivery())
        self.claims.asked[0][1].errback(ConnectionError("redis went away"))
        self.clock.advance(CLAIM_RETRY)
        self.assertEqual(len(self.claims.asked), 2)

    def test_claims_count_against_max_in_flight(self) -> None:
        """Unanswered claims take in-flight places: no third claim while two are asked."""
        for n in range(3):
            self.engine.enqueue(self.delivery(f"msg_{n}"))
        self.assertEqual(len(self.claims.asked), 2)
        self.grant(0, Claim(Verdict.DONE))
        self.assertEqual(len(self.claims.asked), 3)


class DrainTests(_EngineWithClaims):
    def test_running_attempts_finish_and_nothing_new_starts(self) -> None:
        """Draining lets the running attempt finish and records its outcome, while the
        waiting ones (ready, scheduled) are not attempted and stay in the store."""
        for n in range(3):
            self.engine.enqueue(self.delivery(f"msg_{n}"))
        self.grant(0, Claim(Verdict.CLAIMED))
        self.grant(1, Claim(Verdict.CLAIMED))
        self.client.sent[1].result.callback(FAIL)  # msg_1: retry scheduled in 5 s
        self.grant(2, Claim(Verdict.CLAIMED))
        drained = self.engine.drain(8.0, 1.5)
        self.client.sent[0].result.callback(OK)
        self.assertNoResult(drained)  # msg_2 still running
        self.clock.advance(6)  # msg_1's retry time passes during the drain
        self.client.sent[2].result.callback(FAIL)
        self.successResultOf(drained)
        self.assertEqual(len(self.client.sent), 3)
        stored = {d.webhook_id: d.attempts for d in
                  self.successResultOf(self.store.load()).deliveries}
        self.assertEqual(stored, {"msg_1": 1, "msg_2": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_attempts_still_running_at_the_deadline_are_abandoned(self) -> None:
        """An attempt still running when the time is up is cancelled and its claim
        released; the delivery stays pending with its attempt count unchanged."""
        self.engine.enqueue(self.delivery())
        self.grant(0, Claim(Verdict.CLAIMED))
        drained = self.engine.drain(8.0, 1.5)
        self.clock.advance(8.0)
        self.successResultOf(drained)
        self.assertTrue(self.client.sent[0].result.called)  # cancelled
        self.assertEqual(self.claims.released, ["msg_1"])
        self.assertEqual(self.successResultOf(self.store.load()).deliveries[0].attempts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_claim_granted_while_draining_is_released(self) -> None:
        """A claim answered after the drain began is given back, not used."""
        self.engine.enqueue(self.delivery())
        drained = self.engine.drain(8.0, 1.5)
        self.grant(0, Claim(Verdict.CLAIMED))
        self.successResultOf(drained)
        self.assertEqual((self.client.sent, self.claims.released), ([], ["msg_1"]))

    def test_outcome_writes_are_awaited(self) -> None:
        """The drain ends only once the finished attempt's outcome is stored (or the
        writes' share of the time is up)."""
        writes: list[Deferred[None]] = []
        self.engine.enqueue(self.delivery())
        self.grant(0, Claim(Verdict.CLAIMED))
        self.store.delete_delivery = lambda *_a: writes.append(Deferred()) or writes[-1]
        drained = self.engine.drain(8.0, 1.5)
        self.client.sent[0].result.callback(OK)
        self.assertNoResult(drained)
        writes[0].callback(None)
        self.successResultOf(drained)
