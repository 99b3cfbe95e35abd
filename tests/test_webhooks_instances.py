"""Several fanout_tx instances on one real redis-server, all with webhooks enabled: each item
reaches a real receiver on 127.0.0.1 exactly once (claims in Redis), subscriptions created
or deleted through one instance reach the others, and when an instance is killed with
SIGKILL mid-retry or mid-attempt another one finishes the delivery."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from typing_extensions import override

from fanout_tx.cluster.redis_bus import RedisBus
from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.webhooks.model import NewSubscription
from fanout_tx.transports.webhooks.redis_store import RedisStore, connect
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from tests.support.helpers import wait_until
from tests.support.services import RedisServer
from tests.support.webhooks import HANG, ChildInstance, Receiver, fail_first

PREFIX = "multi:"
LEASE = 1.5  # short, so a killed instance's claim runs out quickly
CONFIG = WebhooksConfig(allow_cidrs=(ipaddress.ip_network("127.0.0.0/8"),), verify=False,
                        timeout=1.0, retry_schedule=(0, 0.2, 0.2, 0.2, 0.2, 0.2),
                        max_in_flight=4)


class _Instance:
    """One in-process fanout_tx: a router, the Redis bus and the webhooks service."""

    def __init__(self, router: Router, bus: RedisBus, service: WebhookService) -> None:
        self.router, self.bus, self.service = router, bus, service

    def publish(self, item_id: str, with_id: bool = True) -> Deferred[None]:
        item = parse_item({"channel": "c", "id": item_id if with_id else None,
                           "formats": {"http-request": {"body": f"item {item_id}"}}})
        return self.bus.publish([item], "test")


class _Harness(TestCase):
    @override
    def setUp(self) -> None:
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)

    async def instance(self, sync_interval: float = 60.0) -> _Instance:
        router = Router(reactor)
        bus = RedisBus(router, reactor, parse_redis_url(self.redis.url), PREFIX)
        store = RedisStore(lambda: connect(self.redis.url), PREFIX, lease=LEASE)
        service = build_webhooks(CONFIG, RedisConfig(url=self.redis.url, prefix=PREFIX),
                                 router, reactor, origin_clients(reactor).vetted, store=store,
                                 sync_interval=sync_interval)
        bus.startService()
        self.addCleanup(bus.stopService)
        service.startService()
        self.addCleanup(service.stopService)
        await bus.when_up().addTimeout(10, reactor)
        await service.loaded
        return _Instance(router, bus, service)

    async def receiver(self, behaviour: Any = None) -> Receiver:
        receiver = Receiver(behaviour)
        await receiver.listen()
        self.addCleanup(receiver.close)
        return receiver

    def successes(self, receiver: Receiver) -> Counter[str]:
        return Counter(r.headers["webhook-id"] for r in receiver.requests
                       if 200 <= r.status < 300)


class ExactlyOnceTests(_Harness):
    async def test_each_item_once_from_two_instances(self) -> None:
        """Two instances both deliver every item (the Redis bus); items published through
        either, with every fifth request failing: each webhook-id is answered 2xx exactly
        once, failed ones are retried, and both instances did part of the work."""
        receiver = await self.receiver(
            lambda n: (500, {}) if n % 5 == 0 else (204, {}))
        a, b = await self.instance(), await self.instance()
        subscription = await a.service.register(NewSubscription(
            receiver.url, ("c",), None, (), False))
        receiver.secret = subscription.secret
        await b.service.sync()
        self.assertEqual(b.service.get(subscription.id), subscription)
        for n in range(100):
            await (a if n % 2 else b).publish(str(n))
        await receiver.wait_for(100)
        engines = (a.service.engine, b.service.engine)
        await wait_until(lambda: not any(e.pending_count(subscription.id) for e in engines))
        successes = self.successes(receiver)
        self.assertEqual((len(successes), set(successes.values())), (100, {1}))
        failures = sum(e.attempts["failure"] for e in engines)
        self.assertGreater(failures, 0)
        self.assertEqual(len(receiver.requests), 100 + failures)
        self.assertTrue(all(r.signature_ok for r in receiver.requests))
        self.assertTrue(all(e.attempts["success"] > 0 for e in engines),
                        [e.attempts for e in engines])

    async def test_items_without_id_once_from_two_instances(self) -> None:
        """An item without an id gets a share key from the instance that accepts it, so
        both instances derive the same webhook-id: each item is answered 2xx once."""
        receiver = await self.receiver()
        a, b = await self.instance(), await self.instance()
        subscription = await a.service.register(NewSubscription(
            receiver.url, ("c",), None, (), False))
        receiver.secret = subscription.secret
        await b.service.sync()
        for n in range(40):
            await (a if n % 2 else b).publish(str(n), with_id=False)
        await receiver.wait_for(40)
        engines = (a.service.engine, b.service.engine)
        await wait_until(lambda: not any(e.pending_count(subscription.id) for e in engines))
        successes = self.successes(receiver)
        self.assertEqual((len(successes), set(successes.values())), (40, {1}))
        self.assertEqual(sorted(r.body for r in receiver.requests),
                         sorted(f"item {n}".encode() for n in range(40)))

    async def test_subscriptions_reach_the_other_instance(self) -> None:
        """A subscription created through A is picked up by B's periodic sync; deleted
        through A, B stops delivering to it (a second subscription on the channel, still
        there, witnesses that the later items were delivered)."""
        receiver, witness = await self.receiver(), await self.receiver()
        a, b = await self.instance(), await self.instance(sync_interval=0.05)
        subscription, other = [await a.service.register(NewSubscription(
            r.url, ("c",), None, (), False)) for r in (receiver, witness)]
        # One sync takes in each stored subscription in turn (in Redis's order).
        await wait_until(lambda: None not in (b.service.get(other.id),
                                              b.service.get(subscription.id)))
        self.assertEqual(b.service.get(subscription.id), subscription)
        await b.publish("1")
        await receiver.wait_for(1)
        await a.service.remove(subscription.id)
        await wait_until(lambda: b.service.get(subscription.id) is None)
        await b.publish("2")
        await a.publish("3")
        await witness.wait_for(3)
        engines = (a.service.engine, b.service.engine)
        await wait_until(lambda: not any(e.pending_count(other.id) for e in engines))
        self.assertEqual(len(receiver.requests), 1)

    async def test_deleted_subscription_found_by_a_claim(self) -> None:
        """Deleted through A before B's next sync: B's next claim finds it gone, and B
        drops it without sending."""
        receiver = await self.receiver()
        a, b = await self.instance(), await self.instance()
        subscription = await a.service.register(NewSubscription(
            receiver.url, ("c",), None, (), False))
        await b.service.sync()
        await a.service.remove(subscription.id)
        await b.publish("1")
        await wait_until(lambda: b.service.get(subscription.id) is None)
        self.assertEqual(receiver.requests, [])


class KilledInstanceTests(_Harness):
    async def kill_child_after_first_request(self, receiver: Receiver) -> WebhookService:
        """Starts a child instance that registers and publishes; once its first attempt
        reached the receiver, starts an instance here (it loads the pending delivery) and
        kills the child with SIGKILL. Returns this instance's service."""
        child = ChildInstance(self.redis.url, receiver.url, PREFIX, LEASE)
        self.addCleanup(lambda: child.ended)
        receiver.secret = await child.secret
        await receiver.wait_for(1, "requests")
        survivor = await self.instance()
        await child.kill()
        return survivor.service

    async def test_killed_mid_retry(self) -> None:
        """The child's first attempt fails and it dies before its retry: the surviving
        instance makes the retry (same webhook-id), and the item arrives once."""
        receiver = await self.receiver(fail_first(1))
        survivor = await self.kill_child_after_first_request(receiver)
        await receiver.wait_for(1)
        await wait_until(lambda: survivor.engine.attempts["success"] == 1)
        self.assertEqual([r.status for r in receiver.requests], [500, 204])
        self.assertEqual(len({r.headers["webhook-id"] for r in receiver.requests}), 1)
        self.assertTrue(all(r.signature_ok for r in receiver.requests))

    async def test_killed_mid_attempt(self) -> None:
        """The child dies while its attempt hangs, holding the claim: the survivor waits
        for the claim to expire, then delivers the item, once."""
        receiver = await self.receiver(lambda n: (HANG, {}) if n == 0 else (204, {}))
        survivor = await self.kill_child_after_first_request(receiver)
        started = reactor.seconds()
        await receiver.wait_for(1)
        self.assertLess(reactor.seconds() - started, LEASE + 3.0)  # not the child's 30 s
        self.assertEqual(len(receiver.requests), 2)
        self.assertEqual(self.successes(receiver),
                         Counter({receiver.requests[0].headers["webhook-id"]: 1}))
        await wait_until(lambda: survivor.engine.attempts["success"] == 1)
