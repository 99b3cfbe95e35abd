"""Graceful shutdown of the webhooks transport with a slow real endpoint on 127.0.0.1 and a
real redis-server: an attempt running at shutdown may finish (and its success is stored),
no new attempt starts, and what is not finished within the shutdown timeout stays pending in
Redis, unclaimed, for the next start."""

from __future__ import annotations

import ipaddress

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from typing_extensions import override

from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.webhooks.model import NewSubscription, Subscription
from fanout_tx.transports.webhooks.redis_store import RedisStore, connect
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from fanout_tx.transports.webhooks.shared import Claim, Verdict
from tests.support.services import RedisServer
from tests.support.webhooks import HANG, Receiver

PREFIX = "stop:"
CONFIG = WebhooksConfig(allow_cidrs=(ipaddress.ip_network("127.0.0.0/8"),), verify=False,
                        timeout=30.0, retry_schedule=(0, 0.2), max_in_flight=1)


class ShutdownTests(TestCase):
    @override
    def setUp(self) -> None:
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        self.redis_config = RedisConfig(url=self.redis.url, prefix=PREFIX)

    def store(self) -> RedisStore:
        store = RedisStore(lambda: connect(self.redis.url), PREFIX)
        self.addCleanup(store.close)
        return store

    async def start(self, shutdown_timeout: float) -> tuple[WebhookService, Router]:
        router = Router(reactor)
        service = build_webhooks(CONFIG, self.redis_config, router, reactor,
                                 origin_clients(reactor).vetted,
                                 shutdown_timeout=shutdown_timeout)
        service.startService()
        await service.loaded
        return service, router

    async def slow_receiver(self) -> Receiver:
        """Holds the first delivery until the test answers it; answers the rest at once."""
        receiver = Receiver(lambda n: (HANG, {}) if n == 0 else (204, {}))
        await receiver.listen()
        self.addCleanup(receiver.close)
        return receiver

    async def subscribe_and_publish(self, service: WebhookService, router: Router,
                                    receiver: Receiver, count: int) -> Subscription:
        subscription = await service.register(NewSubscription(
            receiver.url, ("c",), None, (), False))
        receiver.secret = subscription.secret
        for n in range(count):
            router.publish(parse_item({"channel": "c", "id": str(n),
                                       "formats": {"http-request": {"body": f"item {n}"}}}))
        self.assertTrue(await service.engine.writes_confirmed())
        await receiver.wait_for(1, "requests")
        return subscription

    async def test_running_attempt_finishes_the_rest_stays_pending(self) -> None:
        """Stopping while the slow endpoint holds item 0 (max_in_flight 1, item 1 queued):
        the stop waits for the answer and stores the success; item 1 is not attempted and
        is still pending in Redis, and the next start delivers it."""
        receiver = await self.slow_receiver()
        service, router = await self.start(shutdown_timeout=10.0)
        subscription = await self.subscribe_and_publish(service, router, receiver, 2)
        stopping = service.stopService()
        self.assertFalse(stopping.called)
        self.assertEqual(receiver.answer_held(204), 1)
        await stopping
        self.assertEqual(len(receiver.requests), 1)
        self.assertEqual([r.body for r in receiver.unique.values()], [b"item 0"])
        pending = await self.store().pending(subscription.id)
        self.assertEqual([(d.channel, d.body, d.attempts) for d in pending],
                         [("c", b"item 1", 0)])

        service, _router = await self.start(shutdown_timeout=10.0)
        self.addCleanup(service.stopService)
        await receiver.wait_for(2)
        self.assertEqual([r.body for r in receiver.requests], [b"item 0", b"item 1"])
        self.assertTrue(all(r.signature_ok for r in receiver.requests))

    async def test_unfinished_at_the_timeout_stays_pending_unclaimed(self) -> None:
        """An endpoint slower than the shutdown timeout: the stop ends within it, the
        attempt is cancelled, the delivery is still pending in Redis with no attempt
        counted, and its claim was given back, so another instance may take it at once."""
        receiver = await self.slow_receiver()
        service, router = await self.start(shutdown_timeout=1.0)
        subscription = await self.subscribe_and_publish(service, router, receiver, 1)
        started = reactor.seconds()
        await service.stopService()
        self.assertLess(reactor.seconds() - started, 1.0)
        pending = await self.store().pending(subscription.id)
        self.assertEqual([(d.body, d.attempts) for d in pending], [(b"item 0", 0)])
        self.assertEqual(await self.store().claim(pending[0]), Claim(Verdict.CLAIMED))
        self.assertEqual(receiver.answer_held(), 0)  # the connection was closed
