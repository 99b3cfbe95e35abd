"""Hostile use of the webhooks API (issue #13, item 9), over real loopback sockets: custom
header values and the URL's path and query (a target's credentials) never shown again, a
cap on subscriptions (409, also across instances sharing one Redis), caps on the count and
bytes one dead target can hold pending (the oldest become dead letters, counted in
/metrics), and a cap on the bytes of all dead letters together (the oldest dropped, in
memory and in Redis)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.tap import build_service, listening_port, load_settings
from fanout_tx.transports.webhooks.api import WebhooksResource
from fanout_tx.transports.webhooks.redis_store import RedisStore, connect
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from tests.support.helpers import TrackingFactory, wait_until
from tests.support.services import RedisServer, free_port
from tests.support.webhooks import HANG, Receiver, always

CREDENTIAL = "Bearer target-credential-4f9a"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
BODY = "x" * 1000


class _Client(TestCase):
    @override
    def setUp(self) -> None:
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, url, data=data)
        raw = await response.content()
        is_json = response.headers.getRawHeaders("content-type") == ["application/json"]
        return response.code, json.loads(raw) if is_json else None, raw

    async def receiver(self, behaviour: Any = None) -> Receiver:
        receiver = Receiver(behaviour)
        await receiver.listen()
        self.addCleanup(receiver.close)
        return receiver


class _Instance(_Client):
    async def start(self, webhooks: str, redis_url: str = "") -> str:
        """The whole instance (tap.build_service): API, /publish/ and /metrics on one port;
        with ``redis_url``, items go through the Redis bus and deliveries into Redis."""
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "routes").write_text("* 127.0.0.1:8080\n")
        (folder / "fanout.conf").write_text(
            "[handler]\npush_in_http_addr = 127.0.0.1\npush_in_http_port = 0\n"
            + (f"[redis]\nurl = {redis_url}\n" if redis_url else "")
            + "[webhooks]\nallow_cidrs = 127.0.0.0/8\nverify = false\n" + webhooks)
        root, core = build_service(load_settings(str(folder / "fanout.conf")), reactor)
        publish, service = root.getServiceNamed("publish-http"), root.getServiceNamed("webhooks")
        publish.factory = factory = TrackingFactory(publish.factory)
        children = [publish, service]
        if redis_url:
            children.insert(0, root.getServiceNamed("redis"))
        for child in children:
            child.startService()
            self.addCleanup(child.stopService)
        if redis_url:
            await core.bus.when_up().addTimeout(10, reactor)
        self.addCleanup(factory.wait_closed)
        self.service = service
        await service.loaded
        return f"http://127.0.0.1:{(await listening_port(publish)).getHost().port}"

    async def metrics(self, base: str) -> dict[str, float]:
        code, _answer, raw = await self.call("GET", base + "/metrics")
        self.assertEqual(code, 200)
        return {name: float(value) for name, value in (
            line.rsplit(" ", 1) for line in raw.decode().splitlines()
            if line and not line.startswith("#"))}

    async def fill_two_dead_targets(self, base: str) -> tuple[list[str], dict[str, float]]:
        """Two subscriptions whose targets never deliver, one that never answers and one on
        a closed port, and twelve items of ~1 kB for each, with
        ``max_pending_bytes_total = 8000``: the total stays under the cap, evictions are
        counted, and the subscription holding more pays: the two end up holding about as
        much (the globally oldest first would have left the first one its running attempt
        only).
        Returns the subscription ids and /metrics."""
        receiver = await self.receiver(always(HANG))
        api = base + "/webhooks/subscriptions"
        ids = []
        for channel, url in (("a", receiver.url), ("b", f"http://127.0.0.1:{free_port()}/")):
            code, created, _raw = await self.call("POST", api, {"url": url,
                                                                "channels": [channel]})
            self.assertEqual(code, 201)
            ids.append(created["id"])
        engine = self.service.engine
        for channel in ("a", "b"):
            items = [{"channel": channel, "id": f"{channel}{n}",
                      "formats": {"http-request": {"body": BODY}}} for n in range(12)]
            code, _answer, _raw = await self.call("POST", base + "/publish/", {"items": items})
            self.assertEqual(code, 200)
            for _ in range(500):  # through Redis, the items arrive after the answer
                if engine.dead_letters + sum(map(engine.pending_count, ids)) >= 12 * len(ids):
                    break
                await deferLater(reactor, 0.01, lambda: None)
            self.assertLessEqual(engine.pending_bytes(), 8000)
        self.assertTrue(await engine.writes_confirmed(5))
        pending = [engine.pending_count(i) for i in ids]
        self.assertEqual(engine.dead_letters + sum(pending), 24)
        self.assertLessEqual(abs(pending[0] - pending[1]), 1, pending)
        self.assertEqual(engine.evicted, {"max_pending_bytes_total": engine.dead_letters})
        dead = []
        for subscription_id in ids:
            code, failed, _raw = await self.call("GET", f"{api}/{subscription_id}/failed")
            self.assertEqual(code, 200)
            dead.extend(failed["items"])
        self.assertEqual(len(dead), engine.dead_letters)
        self.assertTrue(all(d["last_error"].startswith(
            "evicted: over max_pending_bytes_total (8000 bytes pending for all")
            for d in dead))
        metrics = await self.metrics(base)
        self.assertEqual(
            metrics['fanout_webhook_evicted_total{reason="max_pending_bytes_total"}'],
            engine.dead_letters)
        self.assertEqual(metrics["fanout_webhook_pending_bytes"], engine.pending_bytes())
        self.assertLessEqual(metrics["fanout_webhook_pending_bytes"], 8000)
        return ids, metrics


class PublishPortTests(_Instance):

    async def test_header_values_are_never_shown(self) -> None:
        """List and get show the custom headers' names only, never their values (the
        target's credentials), nor the signing secret, nor the URL's path and query (a
        Slack-style hook URL is its own credential): only the create answer has them.
        Deliveries still carry the value and go to the full URL."""
        base = await self.start("")
        receiver = await self.receiver()
        origin = receiver.url.removesuffix("/hook")
        hook_url = origin + "/services/T0/B0/PathSecret9?token=QuerySecret7"
        api = base + "/webhooks/subscriptions"
        code, created, _raw = await self.call("POST", api, {
            "url": hook_url, "channels": ["c"], "headers": {"Authorization": CREDENTIAL}})
        self.assertEqual(code, 201)
        self.assertEqual(created["url"], hook_url)
        for url in (api, f"{api}/{created['id']}"):
            code, answer, raw = await self.call("GET", url)
            self.assertEqual(code, 200)
            for secret in (b"target-credential", created["secret"].encode(), b"PathSecret9",
                           b"QuerySecret7", b"services"):
                self.assertNotIn(secret, raw)
        self.assertEqual(answer["headers"], ["Authorization"])
        self.assertEqual(answer["url"], origin + "/\u2026")
        receiver.secret = created["secret"]
        item = {"channel": "c", "formats": {"http-request": {"body": "hi"}}}
        code, _answer, _raw = await self.call("POST", base + "/publish/", {"items": [item]})
        self.assertEqual(code, 200)
        await receiver.wait_for(1).addTimeout(10, reactor)
        self.assertEqual(receiver.requests[0].headers["authorization"], CREDENTIAL)
        self.assertEqual(receiver.requests[0].path,
                         "/services/T0/B0/PathSecret9?token=QuerySecret7")

    async def test_subscription_cap_is_a_409(self) -> None:
        """Past max_subscriptions a create is a 409 with a JSON reason, and nothing is sent
        to the target (no challenge); deleting one makes room again."""
        base = await self.start("max_subscriptions = 2\nverify = true\n")
        api = base + "/webhooks/subscriptions"
        receiver = await self.receiver()
        ids = []
        for _ in range(2):
            code, created, _raw = await self.call("POST", api,
                                                  {"url": receiver.url, "channels": ["c"]})
            self.assertEqual(code, 201)
            ids.append(created["id"])
        code, answer, _raw = await self.call("POST", api, {"url": receiver.url, "channels": ["c"]})
        self.assertEqual(code, 409)
        self.assertIn("subscription limit reached (2", answer["error"])  # JSON, as all
        self.assertEqual(receiver.challenges, 2)
        code, _answer, _raw = await self.call("DELETE", f"{api}/{ids[0]}")
        self.assertEqual(code, 204)
        code, _answer, _raw = await self.call("POST", api, {"url": receiver.url, "channels": ["c"]})
        self.assertEqual(code, 201)

    async def test_pending_bytes_cap_makes_the_oldest_dead_letters(self) -> None:
        """A target that never answers: past max_pending_bytes the oldest waiting deliveries
        become dead letters ("evicted"), newest kept; /metrics counts them and shows the
        pending bytes within the cap (the attempt running is not evicted)."""
        base = await self.start("max_in_flight = 1\nmax_pending_bytes = 4000\ntimeout = 30\n"
                                "retry_schedule = 0\n")
        receiver = await self.receiver(always(HANG))
        api = base + "/webhooks/subscriptions"
        code, created, _raw = await self.call("POST", api, {"url": receiver.url,
                                                            "channels": ["c"]})
        self.assertEqual(code, 201)
        items = [{"channel": "c", "id": f"i{n}", "formats": {"http-request": {"body": BODY}}}
                 for n in range(10)]
        code, _answer, _raw = await self.call("POST", base + "/publish/", {"items": items})
        self.assertEqual(code, 200)
        await receiver.wait_for(1, "requests").addTimeout(10, reactor)
        code, failed, _raw = await self.call("GET", f"{api}/{created['id']}/failed")
        self.assertEqual(code, 200)
        dead = failed["items"]
        # About 1,070 bytes each: item 0 (being attempted) and the newest two fit.
        self.assertEqual(len(dead), 7)
        self.assertTrue(all(d["last_error"].startswith("evicted: over max_pending_bytes")
                            for d in dead))
        self.assertEqual(self.service.engine.pending_count(created["id"]), 3)
        code, _answer, raw = await self.call("GET", base + "/metrics")
        self.assertEqual(code, 200)
        metrics = dict(line.rsplit(" ", 1) for line in raw.decode().splitlines()
                       if line and not line.startswith("#"))
        self.assertEqual(
            float(metrics['fanout_webhook_evicted_total{reason="max_pending_bytes"}']), 7)
        self.assertEqual(float(metrics["fanout_webhook_dead_letters_total"]), 7)
        self.assertLessEqual(float(metrics["fanout_webhook_pending_bytes"]), 4000)

    async def test_pending_count_cap_makes_the_oldest_dead_letters(self) -> None:
        """Past max_pending deliveries the oldest waiting ones become dead letters, as past
        max_pending_bytes (the newest kept, not refused), counted as evicted."""
        base = await self.start("max_in_flight = 1\nmax_pending = 3\ntimeout = 30\n"
                                "retry_schedule = 0\n")
        receiver = await self.receiver(always(HANG))
        api = base + "/webhooks/subscriptions"
        code, created, _raw = await self.call("POST", api, {"url": receiver.url,
                                                            "channels": ["c"]})
        self.assertEqual(code, 201)
        items = [{"channel": "c", "id": f"i{n}", "formats": {"http-request": {"body": f"b{n}"}}}
                 for n in range(10)]
        code, _answer, _raw = await self.call("POST", base + "/publish/", {"items": items})
        self.assertEqual(code, 200)
        await receiver.wait_for(1, "requests").addTimeout(10, reactor)
        code, failed, _raw = await self.call("GET", f"{api}/{created['id']}/failed")
        self.assertEqual(code, 200)
        dead = failed["items"]
        self.assertEqual(len(dead), 7)
        self.assertTrue(all(d["last_error"].startswith("evicted: over max_pending (3")
                            for d in dead))
        # Item 0 is being attempted; the newest two wait.
        self.assertEqual(receiver.requests[0].body, b"b0")
        pending = self.service.engine._queues[created["id"]].pending.values()
        self.assertEqual(sorted(d.body for d in pending), [b"b0", b"b8", b"b9"])
        self.assertEqual(self.service.engine.evicted, {"max_pending": 7})

    async def test_dead_letter_bytes_are_bounded_oldest_first(self) -> None:
        """Dead letters of every subscription together stay within max_dead_letter_bytes:
        the oldest go first, whichever subscription they belong to, counted in /metrics."""
        base = await self.start("max_dead_letter_bytes = 1000\nretry_schedule = 0\n")

        async def publish(items: list[dict]) -> None:
            code, _answer, _raw = await self.call("POST", base + "/publish/", {"items": items})
            self.assertEqual(code, 200)

        await _bury_twenty(self, base + "/webhooks/subscriptions", self.service, publish)
        code, _answer, raw = await self.call("GET", base + "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'fanout_webhook_dead_letters_dropped_total{reason="max_dead_letter_bytes"} '
                      + str(float(20 - self.kept)).encode(), raw)

    async def test_pending_bytes_of_all_subscriptions_are_capped(self) -> None:
        """Past max_pending_bytes_total (all subscriptions together) the subscription
        with the most bytes waiting loses its oldest ones, each a dead letter counted in
        /metrics, though each subscription is far under its own max_pending_bytes."""
        base = await self.start("max_pending_bytes_total = 8000\nmax_in_flight = 1\n"
                                "timeout = 30\nretry_schedule = 0, 3600\n")
        await self.fill_two_dead_targets(base)


async def _bury_twenty(test: Any, api: str, service: WebhookService,
                       publish: Callable[[list[dict]], Awaitable[None]]) -> None:
    """Ten dead letters for subscription A, then ten for B (the target answers 500, one
    attempt each); checks that the listings hold the newest within 1,000 bytes and sets
    ``test.kept``."""
    receiver = await test.receiver(always(500))
    ids = []
    for channel in ("a", "b"):
        code, created, _raw = await test.call("POST", api, {"url": receiver.url,
                                                            "channels": [channel]})
        test.assertEqual(code, 201)
        ids.append(created["id"])
    for count, channel in ((10, "a"), (20, "b")):
        await publish([{"channel": channel, "id": f"{channel}{n}",
                        "formats": {"http-request": {"body": "x"}}} for n in range(10)])
        await wait_until(lambda count=count: service.engine.dead_letters >= count,
                         message=f"{count} dead letters were not recorded")
        test.assertEqual(service.engine.dead_letters, count)
    test.assertTrue(await service.engine.writes_confirmed(5))
    listed = []
    for subscription_id in ids:
        code, failed, _raw = await test.call("GET", f"{api}/{subscription_id}/failed")
        test.assertEqual(code, 200)
        listed.append(failed["items"])
    a, b = listed
    test.assertLessEqual(sum(len(json.dumps(d)) for d in a + b), 1000)
    test.assertGreater(len(b), 0)
    if a:  # the newest kept: any of A's left means all of B's are
        test.assertEqual(len(b), 10)
    test.kept = len(a) + len(b)
    test.assertEqual(service.engine.dead_letters_dropped["max_dead_letter_bytes"],
                     20 - test.kept)


class RedisPublishPortTests(_Instance):
    """The whole instance on Redis (bus and store)."""

    async def test_pending_bytes_of_all_subscriptions_are_capped(self) -> None:
        """As without Redis; and the evicted deliveries leave Redis's pending hashes, which
        hold exactly what is pending in memory."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        base = await self.start("max_pending_bytes_total = 8000\nmax_in_flight = 1\n"
                                "timeout = 30\nretry_schedule = 0, 3600\n", redis.url)
        ids, _metrics = await self.fill_two_dead_targets(base)
        reader = RedisStore(lambda: connect(redis.url), RedisConfig.prefix)
        self.addCleanup(reader.close)
        engine = self.service.engine
        buried = 0
        for subscription_id in ids:
            stored = await reader.pending(subscription_id)
            self.assertEqual(len(stored), engine.pending_count(subscription_id))
            buried += len(await reader.dead_letters(subscription_id))
        self.assertEqual(buried, engine.dead_letters)


class RedisCapTests(_Client):
    """The same caps with the Redis store, two instances sharing it."""

    @override
    def setUp(self) -> None:
        super().setUp()
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)

    async def instance(self, config: WebhooksConfig) -> tuple[WebhookService, str]:
        self.router = Router(reactor)
        service = build_webhooks(config, RedisConfig(url=self.redis.url), self.router,
                                 reactor, origin_clients(reactor).vetted, sync_interval=3600)
        service.startService()
        self.addCleanup(service.stopService)
        await service.loaded
        root = Resource()
        root.putChild(b"webhooks", WebhooksResource(service))
        factory = TrackingFactory(Site(root))
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(factory.wait_closed)
        self.addCleanup(port.stopListening)
        return service, f"http://127.0.0.1:{port.getHost().port}/webhooks/subscriptions"

    async def test_cap_holds_across_instances(self) -> None:
        """max_subscriptions counts what is in Redis: the second instance, which has not
        synced the first one's subscription yet, still answers 409."""
        config = WebhooksConfig(allow_cidrs=LOOPBACK, verify=False, max_subscriptions=1)
        receiver = await self.receiver()
        _a, api_a = await self.instance(config)
        _b, api_b = await self.instance(config)
        code, _answer, _raw = await self.call("POST", api_a, {"url": receiver.url,
                                                              "channels": ["c"]})
        self.assertEqual(code, 201)
        code, answer, _raw = await self.call("POST", api_b, {"url": receiver.url,
                                                             "channels": ["c"]})
        self.assertEqual(code, 409)
        self.assertIn("max_subscriptions", answer["error"])

    async def test_pending_bytes_cap_leaves_redis_bounded(self) -> None:
        """Evicted deliveries leave Redis's pending hash too, into the dead letters."""
        config = WebhooksConfig(allow_cidrs=LOOPBACK, verify=False, max_in_flight=1,
                                retry_schedule=(0,), timeout=30, max_pending_bytes=4000)
        receiver = await self.receiver(always(HANG))
        service, api = await self.instance(config)
        code, created, _raw = await self.call("POST", api, {"url": receiver.url,
                                                            "channels": ["c"]})
        self.assertEqual(code, 201)
        for n in range(10):
            self.router.publish(parse_item({
                "channel": "c", "id": f"i{n}", "formats": {"http-request": {"body": BODY}}}))
        await receiver.wait_for(1, "requests").addTimeout(10, reactor)
        self.assertTrue(await service.engine.writes_confirmed(5))
        reader = RedisStore(lambda: connect(self.redis.url), RedisConfig.prefix)
        self.addCleanup(reader.close)
        self.assertEqual(len(await reader.pending(created["id"])), 3)
        code, failed, _raw = await self.call("GET", f"{api}/{created['id']}/failed")
        self.assertEqual(len(failed["items"]), 7)


    async def test_dead_letter_bytes_are_bounded_in_redis(self) -> None:
        """The same cap with Redis: the oldest dead letters leave Redis, whichever
        subscription they belong to, and its byte count matches what is stored."""
        config = WebhooksConfig(allow_cidrs=LOOPBACK, verify=False, retry_schedule=(0,),
                                max_dead_letter_bytes=1000)
        service, api = await self.instance(config)

        async def publish(items: list[dict]) -> None:
            for item in items:
                self.router.publish(parse_item(item))

        await _bury_twenty(self, api, service, publish)
        redis = connect(self.redis.url)
        self.addCleanup(redis.disconnect)
        prefix = RedisConfig.prefix + "webhooks:"
        stored = 0
        for subscription in await service._store.subscriptions():
            members = await redis.zrange(f"{prefix}dead-letters:{subscription.id}", 0, -1)
            stored += sum(len(m.encode()) for m in members)
        self.assertEqual(int(await redis.get(prefix + "dead-bytes")), stored)
        self.assertLessEqual(stored, 1000)
        self.assertEqual(await redis.zcard(prefix + "dead-order"), self.kept)
