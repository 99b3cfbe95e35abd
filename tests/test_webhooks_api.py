"""The webhooks transport end to end over real loopback sockets: the subscription API, intent
verification, signed deliveries, retries, timeouts, 410, redirects, dead letters, and one
hanging endpoint among twenty. Receivers run on 127.0.0.1, allowed through allow_cidrs."""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.config.settings import ConfigError, RedisConfig, WebhooksConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.grip.signature import encode_hs256
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.tap import build_service, listening_port, load_settings
from fanout_tx.transports.webhooks.api import WebhooksResource
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from fanout_tx.transports.webhooks.ssrf import IPAddress
from tests.support.helpers import TrackingFactory, self_signed_pem
from tests.support.webhooks import HANG, NotifyingStore, Receiver, always, fail_first

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
FAST = WebhooksConfig(allow_cidrs=LOOPBACK, verify=False, timeout=5.0,
                      retry_schedule=(0, 0.02, 0.02), max_in_flight=4)


def name_resolver(host: str, port: int) -> Deferred[list[IPAddress]]:
    """hooks.example is this machine; every other name is a private address."""
    address = "127.0.0.1" if host == "hooks.example" else "10.9.9.9"
    return succeed([ipaddress.ip_address(address)])


def self_signed(directory: Path, name: str) -> str:
    """Writes a key and a self-signed certificate for ``name``; returns the endpoint
    options for them (the certificate file doubles as the CA file)."""
    key_pem, cert_pem = self_signed_pem(name, x509.DNSName(name))
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key_pem)
    cert_path.write_bytes(cert_pem)
    return f"privateKey={key_path}:certKey={cert_path}"


class _Harness(TestCase):
    """A webhooks service with its API on its own Site, and receivers to deliver to."""

    @override
    def setUp(self) -> None:
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.router = Router(reactor)
        self.store = NotifyingStore()

    async def start(self, config: WebhooksConfig = FAST) -> WebhookService:
        self.service = build_webhooks(config, RedisConfig(), self.router, reactor,
                                      origin_clients(reactor).vetted, resolver=name_resolver,
                                      store=self.store)
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
        origin = receiver.url.removesuffix("/hook")
        expected = {"id": answer["id"], "url": origin + "/\u2026", "channels": ["c"],
                    "headers": ["X-A"]}
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
        for bad in (b"{oops", b"[" * 5000 + b"]" * 5000):  # the second was a 500
            code, body = await self.call("POST", self.api, bad)
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


class TlsTests(_Harness):
    """https targets are verified (service-identity): the certificate must chain to a
    trusted CA ([webhooks] ca_file adds one) and name the URL's host."""

    async def tls_receiver(self, cert_name: str) -> tuple[Receiver, str]:
        directory = Path(self.mktemp())
        directory.mkdir()
        receiver = Receiver()
        await receiver.listen(tls=self_signed(directory, cert_name))
        self.addCleanup(receiver.close)
        port = receiver.url.split(":")[2].split("/")[0]
        receiver.url = f"https://hooks.example:{port}/hook"
        return receiver, str(directory / f"{cert_name}.pem")

    async def test_trusted_certificate_for_the_host(self) -> None:
        """With the certificate's CA in ca_file, the https delivery goes through."""
        receiver, ca_file = await self.tls_receiver("hooks.example")
        await self.start(replace(FAST, ca_file=ca_file))
        await self.subscribe(receiver)
        self.publish()
        await receiver.wait_for(1)
        self.assertTrue(receiver.requests[0].signature_ok)

    async def assert_refused(self, cert_name: str, use_ca: bool) -> str:
        receiver, ca_file = await self.tls_receiver(cert_name)
        await self.start(replace(FAST, ca_file=ca_file if use_ca else "", retry_schedule=(0,)))
        answer = await self.subscribe(receiver)
        buried = self.store.wait("bury")
        self.publish()
        await buried
        _code, failed = await self.call("GET", f"{self.api}/{answer['id']}/failed")
        letter = failed["items"][0]
        self.assertEqual(letter["last_status"], None)
        self.assertEqual(receiver.requests, [])
        return letter["last_error"]

    async def test_unknown_ca_fails(self) -> None:
        """A certificate from a CA the server does not trust fails the attempt before
        anything is sent."""
        error = await self.assert_refused("hooks.example", use_ca=False)
        self.assertIn("certificate verify failed", error)

    async def test_certificate_for_another_name_fails(self) -> None:
        """A trusted certificate that does not name the URL's host fails the attempt."""
        error = await self.assert_refused("other.example", use_ca=True)
        self.assertIn("DNSMismatch", error)  # service-identity's verdict


class WiringTests(_Harness):
    """tap.build_service: the ``webhooks`` child, its API on the publish port behind the
    publish API's auth, and items published through /publish/ reaching the endpoint."""

    def settings(self, webhooks: str, folder: Path | None = None) -> Any:
        if folder is None:
            folder = Path(self.mktemp())
            folder.mkdir()
        (folder / "routes").write_text("* 127.0.0.1:8080\n")
        (folder / "fanout.conf").write_text(
            "[handler]\npush_in_http_addr = 127.0.0.1\npush_in_http_port = 0\n"
            "push_in_http_key = hook-test-key\n[webhooks]\n" + webhooks)
        return load_settings(str(folder / "fanout.conf"))

    def test_ca_file_is_relative_to_the_config(self) -> None:
        """ca_file is found next to the config; a missing one stops start-up with the
        file, the line and the reason."""
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "ca.pem").write_text("")
        settings = self.settings("ca_file = ca.pem\n", folder)
        self.assertEqual(settings.config.webhooks.ca_file, str(folder / "ca.pem"))
        with self.assertRaises(ConfigError) as caught:
            self.settings("ca_file = missing.pem\n")
        self.assertIn("no such file", str(caught.exception))
        self.assertIn("fanout.conf", str(caught.exception))

    def test_disabled_means_no_child(self) -> None:
        """With [webhooks] enabled = false there is no webhooks service nor API."""
        root, core = build_service(self.settings("enabled = false\n"), reactor)
        self.assertNotIn("webhooks", [s.name for s in root])
        assert core.publish_root is not None
        self.assertNotIn(b"webhooks", core.publish_root.children)

    async def test_publish_port_end_to_end(self) -> None:
        """Without a token the API answers 401; with one, a subscription is created and
        an http-request item published on /publish/ arrives signed."""
        root, core = build_service(self.settings(
            "allow_cidrs = 127.0.0.0/8\nverify = false\nretry_schedule = 0\n"), reactor)
        publish, webhooks = root.getServiceNamed("publish-http"), root.getServiceNamed("webhooks")
        publish.factory = factory = TrackingFactory(publish.factory)
        for service in (publish, webhooks):
            service.startService()
            self.addCleanup(service.stopService)
        self.addCleanup(factory.wait_closed)
        base = f"http://127.0.0.1:{(await listening_port(publish)).getHost().port}"
        receiver = await self.receiver()
        request = {"url": receiver.url, "channels": ["c"]}
        response = await self.http.post(base + "/webhooks/subscriptions",
                                        data=json.dumps(request).encode())
        self.assertEqual(response.code, 401)
        await response.content()
        token = encode_hs256({"iss": "t", "exp": int(time.time()) + 60}, b"hook-test-key")
        auth = {"Authorization": f"Bearer {token}"}
        response = await self.http.post(base + "/webhooks/subscriptions", headers=auth,
                                        data=json.dumps(request).encode())
        self.assertEqual(response.code, 201)
        receiver.secret = json.loads(await response.content())["secret"]
        item = {"channel": "c", "formats": {"http-request": {"body": "via publish"}}}
        response = await self.http.post(base + "/publish/", headers=auth,
                                        data=json.dumps({"items": [item]}).encode())
        self.assertEqual(response.code, 200, await response.content())
        await receiver.wait_for(1)
        self.assertEqual(receiver.requests[0].body, b"via publish")
        self.assertTrue(receiver.requests[0].signature_ok)
        self.assertIs(core.router.subscriber_count(), 1)
