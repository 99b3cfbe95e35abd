"""Durability with a real redis-server (append-only file): subscriptions and pending
deliveries, scheduled retries included, survive a restart of fanout_tx and of Redis, and a
receiver that dedupes on webhook-id gets each item exactly once."""

from __future__ import annotations

import ipaddress
import signal

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from typing_extensions import override

from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.webhooks.model import NewSubscription
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from tests.support.services import RedisServer
from tests.support.webhooks import ChildInstance, Receiver, fail_first

CONFIG = WebhooksConfig(allow_cidrs=(ipaddress.ip_network("127.0.0.0/8"),), verify=False,
                        timeout=5.0, retry_schedule=(0, 0.5, 0.5), max_in_flight=2)


class RestartTests(TestCase):
    @override
    def setUp(self) -> None:
        self.redis = RedisServer(appendonly=True)
        self.addCleanup(self.redis.stop)
        self.redis_config = RedisConfig(url=self.redis.url, prefix="durable:")

    async def fanout(self) -> tuple[WebhookService, Router]:
        """One fanout_tx side: a router and the webhooks service on the shared Redis."""
        router = Router(reactor)
        service = build_webhooks(CONFIG, self.redis_config, router, reactor,
                                 origin_clients(reactor).vetted)
        service.startService()
        await service.loaded
        return service, router

    async def test_retry_survives_restart_exactly_once(self) -> None:
        """The first attempt fails; fanout_tx stops before the retry and Redis is killed
        (SIGKILL) and restarted; a new fanout_tx on the same Redis makes the retry, with
        the same webhook-id, and the subscription goes on delivering new items."""
        receiver = Receiver(fail_first(1))
        await receiver.listen()
        self.addCleanup(receiver.close)
        service, router = await self.fanout()
        subscription = await service.register(NewSubscription(
            receiver.url, ("c",), None, (), None))
        receiver.secret = subscription.secret
        router.publish(parse_item({"channel": "c", "id": "1",
                                   "formats": {"http-request": {"body": "one"}}}))
        # What the publish API waits for before answering: the delivery is in Redis.
        self.assertTrue(await service.engine.writes_confirmed())
        await receiver.wait_for(1, "requests")
        await service.stopService()  # mid-retry: the retry timer dies with it
        self.redis.stop(signal.SIGKILL)
        self.redis.restart()

        service, router = await self.fanout()
        self.addCleanup(service.stopService)
        self.assertEqual([s.id for s in service.subscriptions()], [subscription.id])
        await receiver.wait_for(1)
        self.assertEqual(len(receiver.requests), 2)
        first_id = receiver.requests[0].headers["webhook-id"]
        self.assertEqual(list(receiver.unique), [first_id])
        self.assertTrue(all(r.signature_ok for r in receiver.requests))
        router.publish(parse_item({"channel": "c", "id": "2",
                                   "formats": {"http-request": {"body": "two"}}}))
        await receiver.wait_for(2)
        self.assertEqual(len(receiver.requests), 3)
        self.assertEqual([r.body for r in receiver.unique.values()], [b"one", b"two"])

    async def test_kill_9_mid_retry(self) -> None:
        """A fanout_tx process killed with SIGKILL right after a failed first attempt: a
        new one on the same Redis makes the retry; the receiver sees one webhook-id."""
        receiver = Receiver(fail_first(1))
        await receiver.listen()
        self.addCleanup(receiver.close)
        child = ChildInstance(self.redis.url, receiver.url, "durable:", lease=1.0)
        self.addCleanup(lambda: child.ended)
        receiver.secret = await child.secret
        await receiver.wait_for(1, "requests")
        await child.kill()

        service, _router = await self.fanout()
        self.addCleanup(service.stopService)
        await receiver.wait_for(1)
        self.assertEqual(len(receiver.unique), 1)
        self.assertEqual(receiver.requests[-1].body, b"one")
        self.assertTrue(all(r.signature_ok for r in receiver.requests))
        self.assertEqual({r.headers["webhook-id"] for r in receiver.requests},
                         set(receiver.unique))
