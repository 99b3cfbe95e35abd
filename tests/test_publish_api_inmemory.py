"""The publish port's HTTP API in memory (treq's StubTreq: requests traverse the resources
with no socket and no real reactor): auth, bad bodies, a publish reaching the router, and
the webhook subscription API's create/list/get/delete. The same pages over real loopback
sockets are in test_publish_api.py and test_webhooks_api.py."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.bus import LocalBus
from fanout_tx.core.router import Router
from fanout_tx.inputs.publish_api import PublishRoot
from fanout_tx.inputs.publish_auth import BearerAuth
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.webhooks.api import WebhooksResource
from fanout_tx.transports.webhooks.service import build_webhooks
from fanout_tx.transports.webhooks.ssrf import IPAddress
from fanout_tx.transports.webhooks.store import MemoryStore
from tests.support.helpers import RecordingSubscriber
from tests.support.publish import ITEM, KEY, NOW, publish_body, publish_token

# hooks.example resolves into a documentation network the policy is told to allow; every
# other name to a private address, which the policy refuses. Nothing is ever connected to.
HOOKS_NET = ipaddress.ip_network("192.0.2.0/24")
CONFIG = WebhooksConfig(allow_cidrs=(HOOKS_NET,), verify=False)
SUBSCRIPTIONS = "http://publish.test/webhooks/subscriptions"


def resolve(host: str, port: int) -> Deferred[list[IPAddress]]:
    address = "192.0.2.10" if host == "hooks.example" else "10.1.2.3"
    return succeed([ipaddress.ip_address(address)])


class InMemoryPublishApiTests(SynchronousTestCase):
    """A PublishRoot with auth on, a LocalBus and the webhooks mounted, as tap.py wires it."""

    @override
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.router = Router(self.clock)
        self.subscriber = RecordingSubscriber()
        self.router.subscribe("c", self.subscriber)
        memory = MemoryReactorClock()
        self.webhooks = build_webhooks(CONFIG, RedisConfig(), self.router, memory,
                                       origin_clients(memory).vetted, resolver=resolve,
                                       store=MemoryStore())
        root = PublishRoot(LocalBus(self.router), self.router,
                           BearerAuth(KEY, "publisher", self.clock))
        root.mount(b"webhooks", WebhooksResource(self.webhooks))
        self.treq = StubTreq(root)

    def call(self, method: str, url: str, body: bytes | None = None,
             token: bytes | None = None, **headers: str) -> tuple[int, Any, bytes]:
        """One request through the resource tree; (status, headers, body) once answered."""
        if token is not None:
            headers["Authorization"] = token.decode()
        answered = self.treq.request(method, url, data=body, headers=headers)
        self.treq.flush()
        response = self.successResultOf(answered)
        content = self.treq.content(response)
        self.treq.flush()
        return response.code, response.headers, self.successResultOf(content)

    def publish(self, body: bytes, token: bytes | None = None,
                **headers: str) -> tuple[int, Any, bytes]:
        return self.call("POST", "http://publish.test/publish/", body,
                         publish_token() if token is None else token, **headers)

    # -- the publish API ------------------------------------------------------------------

    def test_publish_reaches_the_router(self) -> None:
        """A valid, signed publish is answered ``Published`` and delivered to the channel's
        subscriber."""
        code, headers, body = self.publish(publish_body(ITEM))
        self.assertEqual((code, body), (200, b"Published\n"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertEqual(self.subscriber.contents, [b"hello\n"])

    def test_publish_answers_json_when_asked(self) -> None:
        code, headers, body = self.publish(publish_body(ITEM), Accept="application/json")
        self.assertEqual((code, json.loads(body)), (200, {"message": "Published"}))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_missing_and_bad_tokens_are_refused(self) -> None:
        """No token, a token signed with another key, an expired one: 401 with
        ``WWW-Authenticate: Bearer``, and nothing published."""
        refused = [
            self.publish(publish_body(ITEM), token=b""),
            self.publish(publish_body(ITEM), token=b"Bearer not-a-jwt"),
            self.publish(publish_body(ITEM), token=publish_token(exp=int(NOW) - 3600)),
        ]
        for code, headers, body in refused:
            self.assertEqual(code, 401, body)
            self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b"Bearer"])
            self.assertTrue(body.strip(), "a 401 says why")
        self.assertEqual(self.subscriber.received, [])

    def test_bad_json_is_400_with_the_reason(self) -> None:
        """A body that is not JSON, or whose item lacks a channel: 400 naming the problem;
        nothing published, and the next valid publish still goes through."""
        code, _headers, body = self.publish(b'{"items": [')
        self.assertEqual(code, 400)
        self.assertIn(b"JSON", body)
        code, _headers, body = self.publish(json.dumps(
            {"items": [{"formats": {"http-stream": {"content": "x"}}}]}).encode())
        self.assertEqual(code, 400)
        self.assertIn(b"channel", body)
        self.assertEqual(self.subscriber.received, [])
        self.assertEqual(self.publish(publish_body(ITEM))[0], 200)
        self.assertEqual(len(self.subscriber.received), 1)

    def test_get_on_publish_is_405(self) -> None:
        code, headers, body = self.call("GET", "http://publish.test/publish/",
                                        token=publish_token())
        self.assertEqual((code, body), (405, b"Method not allowed: GET.\n"))
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"POST"])

    # -- the webhook subscription API -----------------------------------------------------

    def subscribe(self, **document: Any) -> tuple[int, Any]:
        code, _headers, body = self.call("POST", SUBSCRIPTIONS, json.dumps(document).encode(),
                                         token=publish_token(),
                                         **{"Content-Type": "application/json"})
        return code, json.loads(body)

    def test_webhook_create_list_get_delete(self) -> None:
        """Created (201, with its id and generated secret), listed, read (without the
        secret), subscribed on the router; deleted (204), then gone from the list, the
        router and ``GET``."""
        code, created = self.subscribe(url="https://hooks.example/in", channels=["news"])
        self.assertEqual(code, 201, created)
        self.assertEqual((created["url"], created["channels"]),
                         ("https://hooks.example/in", ["news"]))
        self.assertTrue(created["id"] and created["secret"])
        self.assertTrue(self.router.has_subscribers("news"))

        code, _headers, body = self.call("GET", SUBSCRIPTIONS, token=publish_token())
        self.assertEqual(code, 200)
        self.assertEqual([s["id"] for s in json.loads(body)["items"]], [created["id"]])
        one = f"{SUBSCRIPTIONS}/{created['id']}"
        code, _headers, body = self.call("GET", one, token=publish_token())
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["channels"], ["news"])
        self.assertNotIn("secret", json.loads(body))  # only the create answer has it

        code, _headers, body = self.call("DELETE", one, token=publish_token())
        self.assertEqual((code, body), (204, b""))
        self.assertFalse(self.router.has_subscribers("news"))
        code, _headers, body = self.call("GET", SUBSCRIPTIONS, token=publish_token())
        self.assertEqual(json.loads(body), {"items": []})
        code, _headers, body = self.call("GET", one, token=publish_token())
        self.assertEqual(code, 404)
        self.assertIn("no subscription", json.loads(body)["error"])

    def test_webhook_bad_requests_are_400_with_the_reason(self) -> None:
        """Bad JSON, a missing url, a callback resolving to a private address: 400 with
        ``{"error": reason}``; nothing stored."""
        code, _headers, body = self.call("POST", SUBSCRIPTIONS, b"{not json",
                                         token=publish_token())
        self.assertEqual((code, json.loads(body)), (400, {"error": "body is not valid JSON"}))
        code, answer = self.subscribe(channels=["news"])
        self.assertEqual(code, 400)
        self.assertIn("url", answer["error"])
        code, answer = self.subscribe(url="https://internal.example/in", channels=["news"])
        self.assertEqual(code, 400)
        self.assertIn("not a public address", answer["error"])
        self.assertEqual(self.webhooks.subscriptions(), [])

    def test_webhooks_need_the_publish_key(self) -> None:
        code, headers, _body = self.call("GET", SUBSCRIPTIONS)
        self.assertEqual(code, 401)
        self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b"Bearer"])
        code, _headers, _body = self.call("POST", SUBSCRIPTIONS, json.dumps(
            {"url": "https://hooks.example/in", "channels": ["news"]}).encode())
        self.assertEqual(code, 401)
        self.assertEqual(self.webhooks.subscriptions(), [])
