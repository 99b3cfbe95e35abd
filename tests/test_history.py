"""Channel history: the in-memory store and the Redis one pass the same tests (one mixin);
the router records each item with an id once; Redis history is shared by two instances and
outlives a restart of both fanout_tx and Redis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from fanout_tx.cluster.redis_history import RedisHistory
from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.core.history import CHANNEL_OVERHEAD, MemoryHistory, item_size
from fanout_tx.core.interfaces import IHistory
from fanout_tx.core.items import Item, parse_item
from fanout_tx.core.router import Router
from tests.support.services import RedisServer


def item(number: int, channel: str = "c", **extra: Any) -> Item:
    return parse_item({"channel": channel, "id": f"i{number}",
                       "formats": {"http-stream": {"content": f"item {number}\n"},
                                   "ws-message": {"content": f"m{number}"}}, **extra})


def ids(items: list[Item] | None) -> list[str | None] | None:
    return None if items is None else [i.id for i in items]


class _StoreTests:
    """What every IHistory does; ``make(max_items)`` builds the store under test (a
    Deferred firing with it, once usable)."""

    def make(self, max_items: int) -> Deferred[Any]:
        raise NotImplementedError

    @inlineCallbacks
    def test_interface(self) -> Any:
        verifyObject(IHistory, (yield self.make(5)))

    @inlineCallbacks
    def test_since_and_last(self) -> Any:
        """``since`` gives the items after an id, oldest first, bounded by ``limit``;
        ``[]`` after the newest; None for an id not kept; ``last`` the newest N."""
        history = yield self.make(5)
        for n in range(1, 5):
            history.record(item(n))
        self.assertEqual(ids((yield history.since("c", "i2", 100))), ["i3", "i4"])
        self.assertEqual(ids((yield history.since("c", "i1", 2))), ["i2", "i3"])
        self.assertEqual((yield history.since("c", "i4", 100)), [])
        self.assertIsNone((yield history.since("c", "nope", 100)))
        self.assertIsNone((yield history.since("other", "i1", 100)))
        self.assertEqual(ids((yield history.last("c", 2))), ["i3", "i4"])
        self.assertEqual((yield history.last("other", 2)), [])
        self.assertEqual((yield history.last("c", 0)), [])

    @inlineCallbacks
    def test_items_as_published(self) -> Any:
        """A replayed item is the item as published: every format, content and meta."""
        history = yield self.make(5)
        published = item(1, meta={"sender": "u"})
        history.record(published)
        (kept,) = yield history.last("c", 1)
        self.assertEqual(kept, published)

    @inlineCallbacks
    def test_max_items(self) -> Any:
        """Only the newest ``max_items`` per channel are kept; an older id is gone."""
        history = yield self.make(3)
        for n in range(1, 7):
            history.record(item(n))
            history.record(item(n, channel="d"))
        self.assertEqual(ids((yield history.last("c", 10))), ["i4", "i5", "i6"])
        self.assertEqual(ids((yield history.last("d", 10))), ["i4", "i5", "i6"])
        self.assertIsNone((yield history.since("c", "i2", 10)))
        self.assertEqual(ids((yield history.since("c", "i4", 10))), ["i5", "i6"])


class MemoryHistoryTests(_StoreTests, TestCase):
    def make(self, max_items: int) -> Deferred[Any]:
        return succeed(self.memory(max_items))

    def memory(self, max_items: int, max_age: float = 0.0, max_bytes: int = 10**9) -> Any:
        self.clock = Clock()
        return MemoryHistory(self.clock, max_items, max_age, max_bytes)

    def resolve(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def test_max_bytes_oldest_first_across_channels(self) -> None:
        """Past ``max_bytes`` the oldest item of any channel goes first, and the count
        stays within the cap."""
        one = item_size(item(1)) + CHANNEL_OVERHEAD + 1
        history = self.memory(100, max_bytes=3 * one + 10)
        history.record(item(1, channel="a"))
        history.record(item(2, channel="b"))
        history.record(item(3, channel="a"))
        history.record(item(4, channel="c"))
        self.assertLessEqual(history.bytes, history.max_bytes)
        self.assertEqual(ids(self.resolve(history.last("a", 10))), ["i3"])
        self.assertEqual(ids(self.resolve(history.last("b", 10))), ["i2"])
        self.assertEqual(history.evicted, 1)
        history.record(item(5, channel="c"))
        self.assertEqual(self.resolve(history.last("b", 10)), [])

    def test_max_bytes_skips_trimmed_entries(self) -> None:
        """Entries already trimmed by ``max_items`` are not evicted twice: the next oldest
        kept item goes."""
        size = item_size(item(1))
        history = self.memory(2)
        for n in range(1, 6):
            history.record(item(n, channel="a"))  # a keeps i4, i5
        history.record(item(6, channel="b"))
        history.max_bytes = history.bytes + size - 1  # one item too many: i4 goes
        history.record(item(7, channel="b"))
        self.assertEqual(ids(self.resolve(history.last("a", 10))), ["i5"])
        self.assertEqual(ids(self.resolve(history.last("b", 10))), ["i6", "i7"])
        self.assertEqual(history.evicted, 1)

    def test_max_age(self) -> None:
        """Items older than ``max_age`` are gone, on reads as on writes."""
        history = self.memory(10, max_age=60)
        history.record(item(1))
        self.clock.advance(30)
        history.record(item(2))
        self.clock.advance(31)
        self.assertEqual(ids(self.resolve(history.last("c", 10))), ["i2"])
        self.assertIsNone(self.resolve(history.since("c", "i1", 10)))
        self.clock.advance(30)
        self.assertEqual(self.resolve(history.last("c", 10)), [])
        self.assertEqual((history.count, history._channels), (0, {}))
        history.record(item(3))
        self.clock.advance(61)
        history.record(item(4, channel="d"))  # a write expires too
        self.assertEqual((history.count, list(history._channels)), (1, ["d"]))

    def test_order_queue_bounded(self) -> None:
        """Names left behind by trimming are compacted: the order queue stays within
        twice the kept items (plus a constant), and eviction still goes oldest first."""
        history = self.memory(1)
        for n in range(10_000):
            history.record(item(n, channel=f"c{n % 3}"))
        self.assertLessEqual(len(history._order), 2 * history.count + 1024)
        history.max_bytes = history.bytes - 1
        history.record(item(10_000, channel="c0"))
        self.assertEqual(self.resolve(history.last("c1", 1)), [])  # c1's was oldest


class Sub:
    """A stream subscriber that takes every item and does nothing with it."""

    formats = ("http-stream",)
    meta: dict[str, str] = {}

    def deliver(self, *args: Any) -> None:
        pass


class RouterRecordsTests(SynchronousTestCase):
    def test_once_per_item_with_an_id(self) -> None:
        """The router records every delivered item that has an id once, whatever the
        number of subscribers; duplicates and items without id are not recorded."""
        clock = Clock()
        history = MemoryHistory(clock, 10)
        router = Router(clock, history=history)

        for _ in range(3):
            router.subscribe("c", Sub())
        router.publish(item(1))
        router.publish(item(1))
        router.publish(parse_item({"channel": "c", "formats": {"http-stream": {"content": "x"}}}))
        router.publish(item(2, channel="quiet"))  # no subscriber: still recorded
        self.assertEqual(history.count, 2)
        self.assertEqual(ids(self.successResultOf(history.last("c", 5))), ["i1"])

    def test_in_delivery_order(self) -> None:
        """An item held back for its predecessor is recorded after it."""
        clock = Clock()
        history = MemoryHistory(clock, 10)
        router = Router(clock, history=history)

        router.subscribe("c", Sub())
        router.publish(item(1))
        router.publish(item(3, **{"prev-id": "i2"}))
        router.publish(item(2, **{"prev-id": "i1"}))
        self.assertEqual(ids(self.successResultOf(history.last("c", 5))), ["i1", "i2", "i3"])


class RedisHistoryTests(_StoreTests, TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)

    def make(self, max_items: int, max_age: float = 0.0, prefix: str = "t:") -> Deferred[Any]:
        history = RedisHistory(reactor, parse_redis_url(self.redis.url), max_items, max_age,
                               prefix=prefix)
        history.startService()
        self.addCleanup(history.stopService)
        return history.when_up().addTimeout(10, reactor).addCallback(lambda _: history)

    @inlineCallbacks
    def test_shared_by_two_instances(self) -> Any:
        """Two instances on one Redis see one history: what the accepting instance records
        is read by the other; the copy it receives (``remote``) is not written again."""
        a = yield self.make(10)
        b = yield self.make(10)
        for n in range(1, 4):
            a.record(item(n))
            b.record(replace(item(n), remote=True))
        self.assertEqual(ids((yield a.last("c", 10))), ["i1", "i2", "i3"])  # a's writes done
        self.assertEqual(ids((yield b.since("c", "i1", 10))), ["i2", "i3"])

    @inlineCallbacks
    def test_same_id_recorded_once(self) -> Any:
        """An item each instance got from ZeroMQ SUB (not remote) is kept once."""
        a = yield self.make(10)
        b = yield self.make(10)
        a.record(item(1))
        a.record(item(2))
        yield a.last("c", 1)  # a's writes done
        b.record(item(1))
        b.record(item(2))
        self.assertEqual(ids((yield b.last("c", 10))), ["i1", "i2"])

    @inlineCallbacks
    def test_survives_restarts(self) -> Any:
        """History in Redis outlives the instance, and with an append-only file Redis too."""
        self.redis.stop()
        self.redis = RedisServer(appendonly=True)
        self.addCleanup(self.redis.stop)
        first = yield self.make(10)
        first.record(item(1))
        first.record(item(2))
        self.assertEqual(len((yield first.last("c", 10))), 2)  # written before the stop
        yield first.stopService()
        self.redis.restart()
        second = yield self.make(10)
        self.assertEqual(ids((yield second.since("c", "i1", 10))), ["i2"])

    @inlineCallbacks
    def test_max_age(self) -> Any:
        """Entries older than ``max_age`` are not read (and the key expires)."""
        history = yield self.make(10, max_age=0.2)
        history.record(item(1))
        self.assertEqual(len((yield history.last("c", 10))), 1)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual((yield history.last("c", 10)), [])

    @inlineCallbacks
    def test_redis_down(self) -> Any:
        """With Redis away a record is counted and logged, never raised; a read fails
        (callers fall back)."""
        history = yield self.make(10)
        self.redis.stop()
        yield deferLater(reactor, 0.1, lambda: None)
        history.record(item(1))
        yield self.assertFailure(history.last("c", 1), Exception)
        self.assertEqual(history.failed, 1)
        self.flushLoggedErrors()


class RedisScriptLoadTests(SynchronousTestCase):
    def test_failed_load_sends_nothing_more(self) -> None:
        """When Redis refuses the first script (still loading its data after a restart),
        the second is not sent: no answer is left unhandled, the link retries."""
        from twisted.internet.defer import fail
        from twisted.internet.testing import MemoryReactorClock
        from txredisapi import ResponseError

        calls: list[tuple[Any, ...]] = []

        def command(*args: Any) -> Deferred[Any]:
            calls.append(args)
            return fail(ResponseError("LOADING Redis is loading the dataset in memory"))

        history = RedisHistory(MemoryReactorClock(), parse_redis_url("redis://127.0.0.1:1"), 5)
        self.failureResultOf(history._load_scripts(command), ResponseError)
        self.assertEqual(len(calls), 1)
