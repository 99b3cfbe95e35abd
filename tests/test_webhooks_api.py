"""The webhooks transport end to end over real loopback sockets: the subscription API, intent
verification, signed deliveries, retries, timeouts, 410, redirects, dead letters, and one
hanging endpoint among twenty. Receivers run on 127.0.0.1, allowed through allow_cidrs."""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import replace
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.config import RedisConfig, WebhooksConfig
from fanout_tx.items import parse_item
from fanout_tx.router import Router
from fanout_tx.webhooks.api import WebhooksResource
from fanout_tx.webhooks.service import WebhookService, build_webhooks
from fanout_tx.webhooks.ssrf import IPAddress
from tests.helpers import TrackingFactory
from tests.test_webhooks_support import (
    HANG,
    NotifyingStore,
    Receiver,
    always,
    fail_first,
)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
FAST = WebhooksConfig(allow_cidrs=LOOPBACK, verify=False, timeout=5.0,
                      retry_schedule=(0, 0.02, 0.02), max_in_flight=4)


def name_resolver(host: str, port: int) -> Deferred[list[IPAddress]]:
    """hooks.example is this machine; every other name is a private address."""
    address = "127.0.0.1" if host == "hooks.example" else "10.9.9.9"
    return succeed([ipaddress.ip_address(address)])


class _Harness(TestCase):
    """A webhooks service with its API on its own Site, and receivers to deliver to."""

    @override
    def setUp(self) -> None:
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.router = Router(reactor)
        self.store = NotifyingStore()

    async def start(self, config: WebhooksConfig = FAST) -> WebhookService:
        self.service = build_webhooks(config, RedisConfig(), self.router, reactor,
                                      resolver=name_resolver, store=self.store)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await self.service.loaded
        root = Resource()
        root.putChild(b"webhooks", WebhooksResource(self.service))
        factory = TrackingFactory(Site(root))
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(factory.wait_closed)
        self.addCleanup(port.stopListening)
        self.api = f"http://127.0.0.1:{port.getHost().port}/webhooks/subscriptions"
        return self.service

    async def receiver(self, behaviour: Any = None, **kwargs: Any) -> Receiver:
        receiver = Receiver(behaviour, **kwargs)
        await receiver.listen()
        self.addCleanup(receiver.close)
        return receiver

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        response = await self.http.request(method, url, data=data)
        content = await response.content()
        return response.code, json.loads(content) if content else None

    async def subscribe(self, receiver: Receiver, **fields: Any) -> dict:
        code, answer = await self.call("POST", self.api,
                                       {"url": receiver.url, "channels": ["c"], **fields})
        self.assertEqual(code, 201, answer)
        receiver.secret = answer["secret"]
        return answer

    def publish(self, n: int = 1, channel: str = "c", **fmt: Any) -> None:
        for index in range(n):
            self.router.publish(parse_item({
                "channel": channel, "id": f"{channel}-{index}",
                "formats": {"http-request": {"body": f"item {index}", **fmt}},
            }))


class SubscriptionApiTests(_Harness):
    async def test_create_verifies_intent_then_delivers_signed(self) -> None:
        """A create with verification sends the challenge first; the answer is 201 with a
        generated whsec_ secret; a published item then arrives signed with it, with the
        format's path, query and headers over the subscription's."""
        await self.start(replace(FAST, verify=True))
        receiver = await self.receiver()
        answer = await self.subscribe(receiver, headers={"X-Custom": "sub", "X-Sub": "s"})
        self.assertEqual(receiver.challenges, 1)
        self.assertTrue(answer["id"].startswith("sub_"))
        self.assertEqual((answer["url"], answer["channels"]), (receiver.url, ["c"]))
        self.assertRegex(answer["secret"], r"^whsec_[A-Za-z0-9+/]{43}=$")
        self.publish(path="/x?y=1", headers={"X-Custom": "format"})
        await receiver.wait_for(1)
        got = receiver.requests[0]
        self.assertTrue(got.signature_ok)
        self.assertEqual((got.method, got.path, got.body), ("POST", "/hook/x?y=1", b"item 0"))
        self.assertEqual((got.headers["x-custom"], got.headers["x-sub"]), ("format", "s"))
        self.assertEqual(got.headers["content-type"], "text/plain; charset=utf-8")
        self.assertTrue(got.headers["webhook-id"].startswith("msg_"))
        self.assertLess(abs(int(got.headers["webhook-timestamp"]) - time.time()), 60)

    async def test_given_secret_and_host_of_a_name(self) -> None:
        """A given secret is used; a URL with a name connects to the vetted address and
        keeps the name in the Host header."""
        await self.start()
        receiver = await self.receiver()
        port = receiver.url.split(":")[2].split("/")[0]
        receiver.url = f"http://hooks.example:{port}/hook"
        secret = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        answer = await self.subscribe(receiver, secret=secret)
        self.assertEqual(answer["secret"], secret)
        self.publish()
        await receiver.wait_for(1)
        self.assertTrue(receiver.requests[0].signature_ok)
        self.assertEqual(receiver.requests[0].headers["host"], f"hooks.example:{port}")

    async def test_verification_failures_are_400s(self) -> None:
        """A challenge answered with an error, a wrong body, too late, or not at all fails
        the create with a 400 naming the reason; nothing is stored."""
        await self.start(replace(FAST, verify=True, timeout=0.5))
        cases = [(always(404), "answered 404"), (always(200), "did not echo"),
                 (always(HANG), "timed out after 0.5s")]
        for behaviour, reason in cases:
            receiver = await self.receiver(behaviour, answer_challenges=False)
            code, answer = await self.call("POST", self.api,
                                           {"url": receiver.url, "channels": ["c"]})
            self.assertEqual(code, 400)
            self.assertIn("verification failed", answer["error"])
            self.assertIn(reason, answer["error"])
        closed = await self.receiver()
        await closed.close()
        code, answer = await self.call("POST", self.api, {"url": closed.url, "channels": ["c"]})
        self.assertEqual(code, 400)
        self.assertIn("refused", answer["error"].lower())
        self.assertEqual(await self.call("GET", self.api), (200, {"items": []}))

    async def test_verify_false_in_request_skips_the_challenge(self) -> None:
        """``verify: false`` in the request overrides the config default."""
        await self.start(replace(FAST, verify=True))
        receiver = await self.receiver()
        await self.subscribe(receiver, verify=False)
        self.assertEqual(receiver.challenges, 0)

    async def test_private_targets_refused_by_default(self) -> None:
        """Without allow_cidrs, loopback and names resolving to private addresses get 400
        and the receiver sees nothing."""
        await self.start(replace(FAST, allow_cidrs=(), verify=True))
        receiver = await self.receiver()
        for url in (receiver.url, "http://10.0.0.1/x", "http://169.254.169.254/",
                    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://internal.example/"):
            code, answer = await self.call("POST", self.api, {"url": url, "channels": ["c"]})
            self.assertEqual(code, 400, url)
            self.assertIn("not a public address", answer["error"])
        self.assertEqual((receiver.challenges, receiver.requests), (0, []))

    async def test_list_get_delete_and_errors(self) -> None:
        """List and get show subscriptions without their secret; delete answers 204 and
        stops deliveries; unknown ids are 404; bad bodies and methods are 4xx."""
        await self.start()
        receiver = await self.receiver()
        answer = await self.subscribe(receiver, headers={"X-A": "1"})
        one = f"{self.api}/{answer['id']}"
        expected = {"id": answer["id"], "url": receiver.url, "channels": ["c"],
                    "headers": {"X-A": "1"}}
        self.assertEqual(await self.call("GET", self.api), (200, {"items": [expected]}))
        self.assertEqual(await self.call("GET", self.api + "/"), (200, {"items": [expected]}))
        self.assertEqual(await self.call("GET", one), (200, expected))
        self.assertEqual(await self.call("GET", one + "/failed"), (200, {"items": []}))
        self.assertEqual(await self.call("DELETE", one), (204, None))
        self.assertEqual(self.router.subscriber_count(), 0)
        for method, url in (("GET", one), ("DELETE", one), ("GET", one + "/failed")):
            code, body = await self.call(method, url)
            self.assertEqual(code, 404)
            self.assertIn(answer["id"], body["error"])
        self.assertEqual((await self.call("GET", self.api + "/x/y/z"))[0], 404)
        self.assertEqual((await self.call("PUT", self.api))[0], 405)
        code, body = await self.call("POST", self.api, b"{oops")
        self.assertEqual((code, body), (400, {"error": "body is not valid JSON"}))
        code, body = await self.call("POST", self.api, {"url": "ftp://x/", "channels": ["c"]})
        self.assertEqual((code, body), (400, {"error": "url scheme must be http or https"}))
        code, body = await self.call("POST", self.api, {"url": receiver.url, "channels": 5})
        self.assertEqual(code, 400)
        self.assertIn("channels", body["error"])


class DeliveryTests(_Harness):
    async def test_retried_until_success_with_the_same_id(self) -> None:
        """Two 500s, then success: three attempts, one webhook-id, each signed."""
        await self.start()
        receiver = await self.receiver(fail_first(2))
        await self.subscribe(receiver)
        self.publish()
        await receiver.wait_for(1)
        self.assertEqual(len(receiver.requests), 3)
        self.assertEqual(len({r.headers["webhook-id"] for r in receiver.requests}), 1)
        self.assertTrue(all(r.signature_ok for r in receiver.requests))

    async def test_dead_letters_after_the_last_attempt(self) -> None:
        """Always failing: after the schedule's three attempts the delivery is listed under
        /failed with its status; redirects count as failures and are not followed."""
        await self.start()
        for status, headers in ((500, {}), (302, {"Location": "http://127.0.0.1:1/"})):
            receiver = await self.receiver(always(status, **headers))
            channel = f"c{status}"
            answer = await self.subscribe(receiver, channels=[channel])
            buried = self.store.wait("bury")
            self.publish(channel=channel)
            await buried
            code, failed = await self.call("GET", f"{self.api}/{answer['id']}/failed")
            self.assertEqual(code, 200)
            [letter] = failed["items"]
            self.assertEqual((letter["channel"], letter["attempts"], letter["last_status"]),
                             (channel, 3, status))
            self.assertEqual(len(receiver.requests), 3)
            await self.call("DELETE", f"{self.api}/{answer['id']}")

    async def test_slow_endpoint_times_out(self) -> None:
        """An endpoint that does not answer within timeout fails the attempt; the dead
        letter has no status and says it timed out."""
        await self.start(replace(FAST, timeout=0.3, retry_schedule=(0,)))
        receiver = await self.receiver(always(HANG))
        answer = await self.subscribe(receiver)
        buried = self.store.wait("bury")
        self.publish()
        await buried
        _code, failed = await self.call("GET", f"{self.api}/{answer['id']}/failed")
        self.assertEqual(failed["items"][0]["last_status"], None)
        self.assertEqual(failed["items"][0]["last_error"], "timed out after 0.3s")

    async def test_410_removes_the_subscription(self) -> None:
        """An endpoint answering 410 Gone loses its subscription: 404 afterwards, and the
        router no longer delivers to it."""
        await self.start()
        receiver = await self.receiver(always(410))
        answer = await self.subscribe(receiver)
        removed = self.store.wait("delete_subscription")
        self.publish()
        await removed
        self.assertEqual((await self.call("GET", f"{self.api}/{answer['id']}"))[0], 404)
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual(len(receiver.requests), 1)

    async def test_one_hanging_endpoint_never_delays_the_others(self) -> None:
        """1,000 items to 20 endpoints, one of which never answers: the other 19 get all
        1,000, each once, while the hanging one holds only its own max_in_flight."""
        await self.start(replace(FAST, timeout=120.0))
        receivers = [await self.receiver() for _ in range(19)]
        hanging = await self.receiver(always(HANG))
        for receiver in [*receivers, hanging]:
            await self.subscribe(receiver)
        started = time.monotonic()
        self.publish(1000)
        await gatherResults([r.wait_for(1000) for r in receivers])
        elapsed = time.monotonic() - started
        self.assertEqual({len(r.unique) for r in receivers}, {1000})
        self.assertTrue(all(r.signature_ok for r in receivers for r in r.requests))
        self.assertEqual(len(hanging.requests), FAST.max_in_flight)
        print(f"\n19 x 1000 webhook deliveries with one endpoint hanging: {elapsed:.2f}s")
