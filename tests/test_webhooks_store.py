"""The webhooks store: one test mixin run against MemoryStore and against RedisStore on a
real redis-server, so the two cannot drift; and RedisStore's claims between two instances."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.trial.unittest import TestCase
from typing_extensions import override
from zope.interface.verify import verifyObject

from fanout_tx.transports.webhooks.model import Delivery, Subscription
from fanout_tx.transports.webhooks.redis_store import RedisStore, connect
from fanout_tx.transports.webhooks.shared import Claim, ISharedStore, Verdict
from fanout_tx.transports.webhooks.store import (
    DEAD_LETTERS_KEPT,
    MAX_DEAD_LETTER_BYTES,
    Dropped,
    IWebhookStore,
    MemoryStore,
    letter_json,
)
from tests.support.services import RedisServer

SUB = Subscription("sub_1", "https://hooks.example/x", ("a", "b"), "whsec_" + "A" * 44,
                   (("X-Token", "t"),))


def _delivery(webhook_id: str, subscription_id: str = "sub_1") -> Delivery:
    return Delivery(webhook_id, subscription_id, "a", "POST", "https://hooks.example/x",
                    (("Content-Type", "text/plain"),), b"\x00body", 1, 123.5, 500, "HTTP 500")


class _StoreTestsMixin:
    store: Any

    def make_store(self, max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES) -> Any:
        raise NotImplementedError

    async def test_interface(self) -> None:
        """The store provides IWebhookStore."""
        self.assertTrue(verifyObject(IWebhookStore, self.make_store()))  # type: ignore[attr-defined]

    async def test_round_trip(self) -> None:
        """Saved subscriptions and deliveries come back from load; replacing a delivery
        keeps the newest state; a deleted one is gone."""
        store = self.make_store()
        await store.save_subscription(SUB)
        first, second = _delivery("msg_1"), _delivery("msg_2")
        await store.save_delivery(first)
        await store.save_delivery(second)
        first.attempts, first.due = 2, 999.0
        await store.save_delivery(first)
        await store.delete_delivery("sub_1", "msg_2")
        state = await store.load()
        self.assertEqual(state.subscriptions, [SUB])  # type: ignore[attr-defined]
        self.assertEqual(state.deliveries, [first])  # type: ignore[attr-defined]

    async def test_bury_keeps_the_newest(self) -> None:
        """Dead letters list newest first, at most DEAD_LETTERS_KEPT, and leave pending."""
        store = self.make_store()
        await store.save_subscription(SUB)
        for n in range(DEAD_LETTERS_KEPT + 2):
            delivery = _delivery(f"msg_{n}")
            await store.save_delivery(delivery)
            await store.bury(delivery)
        dead = await store.dead_letters("sub_1")
        self.assertEqual(len(dead), DEAD_LETTERS_KEPT)  # type: ignore[attr-defined]
        self.assertEqual(dead[0], {  # type: ignore[attr-defined]
            "webhook-id": f"msg_{DEAD_LETTERS_KEPT + 1}", "channel": "a", "attempts": 1,
            "last_status": 500, "last_error": "HTTP 500"})
        self.assertEqual((await store.load()).deliveries, [])  # type: ignore[attr-defined]

    async def test_dead_letter_bytes_are_bounded_oldest_first(self) -> None:
        """Past max_dead_letter_bytes (every subscription's dead letters together) the
        oldest go first, whichever subscription they belong to, and each bury says how many
        it pushed out; deleting a subscription frees its share."""
        size = len(letter_json(_delivery("msg_00").dead_letter()))
        # Five fit, six do not (Redis stores each with its sequence number: a few bytes).
        store = self.make_store(max_dead_letter_bytes=5 * size + 20)
        other = Subscription("sub_2", "https://hooks.example/y", ("a",), SUB.secret)
        await store.save_subscription(SUB)
        await store.save_subscription(other)
        dropped = []
        for n in range(8):
            owner = SUB.id if n < 4 else "sub_2"
            dropped.append(await store.bury(_delivery(f"msg_{n:02d}", owner)))
        self.assertEqual(sum(d.over_bytes for d in dropped), 3)  # type: ignore[attr-defined]
        self.assertEqual(dropped[-1], Dropped(0, 1))  # type: ignore[attr-defined]

        async def ids(subscription_id: str) -> list[str]:
            return [d["webhook-id"] for d in await store.dead_letters(subscription_id)]

        self.assertEqual(await ids(SUB.id), ["msg_03"])  # type: ignore[attr-defined]
        self.assertEqual(await ids("sub_2"),  # type: ignore[attr-defined]
                         ["msg_07", "msg_06", "msg_05", "msg_04"])
        await store.delete_subscription("sub_2")
        for n in range(8, 12):
            self.assertEqual(await store.bury(_delivery(f"msg_{n:02d}")), Dropped())  # type: ignore[attr-defined]
        self.assertEqual(await ids(SUB.id),  # type: ignore[attr-defined]
                         ["msg_11", "msg_10", "msg_09", "msg_08", "msg_03"])

    async def test_dead_letter_error_is_clipped(self) -> None:
        """A dead letter keeps at most 500 characters of its last error."""
        store = self.make_store()
        await store.save_subscription(SUB)
        chatty = _delivery("msg_1")
        chatty.last_error = "e" * 10_000
        await store.bury(chatty)
        [letter] = await store.dead_letters(SUB.id)
        self.assertEqual(len(letter["last_error"]), 500)  # type: ignore[attr-defined]

    async def test_delete_subscription_forgets_everything(self) -> None:
        """Deleting a subscription drops its deliveries and dead letters too."""
        store = self.make_store()
        await store.save_subscription(SUB)
        await store.save_delivery(_delivery("msg_1"))
        await store.bury(_delivery("msg_2"))
        await store.delete_subscription("sub_1")
        state = await store.load()
        self.assertEqual((state.subscriptions, state.deliveries), ([], []))  # type: ignore[attr-defined]
        self.assertEqual(await store.dead_letters("sub_1"), [])  # type: ignore[attr-defined]


class MemoryStoreTests(_StoreTestsMixin, TestCase):
    @override
    def make_store(self, max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES) -> MemoryStore:
        return MemoryStore(max_dead_letter_bytes)


class RedisStoreTests(_StoreTestsMixin, TestCase):
    @override
    def setUp(self) -> None:
        self.server = RedisServer()
        self.addCleanup(self.server.stop)

    @override
    def make_store(self, max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES) -> RedisStore:
        store = RedisStore(lambda: connect(self.server.url), "test:",
                           max_dead_letter_bytes=max_dead_letter_bytes)
        self.addCleanup(store.close)
        return store

    async def test_prefix_and_unix_socket(self) -> None:
        """Keys live under the configured prefix; unix:// URLs work too."""
        store = RedisStore(lambda: connect(f"unix://{self.server.unix_socket}"), "p1:")
        self.addCleanup(store.close)
        await store.save_subscription(SUB)
        other = RedisStore(lambda: connect(self.server.url), "p2:")
        self.addCleanup(other.close)
        self.assertEqual((await other.load()).subscriptions, [])
        self.assertEqual((await store.load()).subscriptions, [SUB])


class RedisClaimTests(TestCase):
    """Two RedisStores (two instances) on one redis-server claiming the same delivery."""

    @override
    def setUp(self) -> None:
        self.server = RedisServer()
        self.addCleanup(self.server.stop)

    def instance(self) -> RedisStore:
        store = RedisStore(lambda: connect(self.server.url), "test:", lease=5.0)
        self.addCleanup(store.close)
        return store

    async def test_shared_store_interface(self) -> None:
        """RedisStore provides ISharedStore (claims, subscriptions, pending)."""
        store = self.instance()
        self.assertTrue(verifyObject(ISharedStore, store))
        await store.save_subscription(SUB)
        await store.save_delivery(_delivery("msg_1"))
        self.assertEqual(await store.subscriptions(), [SUB])
        self.assertEqual(await store.pending("sub_1"), [_delivery("msg_1")])

    async def test_one_claimant_at_a_time_then_done(self) -> None:
        """A claims; B is told to wait at most the lease; A's failed attempt (stored with
        its count) ends the claim and B, with the old count, learns the stored state; B
        claims with it, delivers, and from then on the delivery is done for everyone, and a
        late copy saved by a lagging instance does not bring it back."""
        a, b = self.instance(), self.instance()
        await a.save_subscription(SUB)
        fresh = _delivery("msg_1")
        fresh.attempts, fresh.last_status, fresh.last_error = 0, None, None
        await a.save_delivery(fresh)
        await b.save_delivery(replace(fresh))
        self.assertEqual(await a.claim(fresh), Claim(Verdict.CLAIMED))
        busy = await b.claim(fresh)
        self.assertEqual(busy.verdict, Verdict.BUSY)
        self.assertTrue(0 < busy.wait <= 5.0, busy.wait)
        self.assertEqual(await a.claim(fresh), Claim(Verdict.CLAIMED))  # its own: renewed

        failed = replace(fresh, attempts=1, due=130.0, last_status=500, last_error="HTTP 500")
        await a.save_delivery(failed)
        self.assertEqual(await b.claim(fresh), Claim(Verdict.MOVED, stored=failed))
        await b.save_delivery(fresh)  # a lagging copy never takes the count backwards
        self.assertEqual(await b.pending("sub_1"), [failed])
        self.assertEqual(await b.claim(failed), Claim(Verdict.CLAIMED))
        self.assertEqual((await a.claim(failed)).verdict, Verdict.BUSY)

        await b.delete_delivery("sub_1", "msg_1")
        self.assertEqual(await a.claim(failed), Claim(Verdict.DONE))
        await a.save_delivery(fresh)
        self.assertEqual(await a.pending("sub_1"), [])
        self.assertEqual(await a.claim(fresh), Claim(Verdict.DONE))

    async def test_release_and_bury(self) -> None:
        """A released claim is free at once; a buried delivery is done, and burying it
        again (another instance) adds no second dead letter."""
        a, b = self.instance(), self.instance()
        await a.save_subscription(SUB)
        delivery = _delivery("msg_1")
        await a.save_delivery(delivery)
        self.assertEqual(await a.claim(delivery), Claim(Verdict.CLAIMED))
        await b.release(delivery)  # not B's claim: nothing happens
        self.assertEqual((await b.claim(delivery)).verdict, Verdict.BUSY)
        await a.release(delivery)
        self.assertEqual(await b.claim(delivery), Claim(Verdict.CLAIMED))
        await b.bury(delivery)
        self.assertEqual(await a.claim(delivery), Claim(Verdict.DONE))
        await a.bury(delivery)  # both gave up on it: one dead letter
        self.assertEqual(len(await a.dead_letters("sub_1")), 1)

    async def test_deleted_subscription(self) -> None:
        """Once the subscription is deleted (through any instance) claims say so and saves
        write nothing under it."""
        a, b = self.instance(), self.instance()
        await a.save_subscription(SUB)
        await a.delete_subscription("sub_1")
        await b.save_delivery(_delivery("msg_1"))
        self.assertEqual(await b.pending("sub_1"), [])
        self.assertEqual(await b.claim(_delivery("msg_1")), Claim(Verdict.UNSUBSCRIBED))
