"""The HTTP publish API (SPEC A5) over real loopback sockets, plus its in-memory body limit."""

from __future__ import annotations

import json
from base64 import b64encode
from pathlib import Path
from typing import Any

from gripcontrol import GripPubControl
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from fanout_tx.core.bus import BusUnavailableError
from fanout_tx.core.router import Router
from fanout_tx.grip.signature import encode_hs256
from fanout_tx.inputs.publish_api import LimitedRequest, PublishRoot, PublishSite, TextPage
from fanout_tx.inputs.publish_auth import BearerAuth
from fanout_tx.tap import Core, build_service, listening_port, load_settings
from tests.support.helpers import RecordingBus, RecordingSubscriber, TrackingFactory, wait_until
from tests.support.publish import ITEM, KEY, NOW, PublishApiCase, publish_body, publish_token


class PublishTests(PublishApiCase):
    async def test_publish_answers_text(self) -> None:
        """A valid publish gets 200 ``Published`` as text/plain and reaches subscribers."""
        url = await self.serve(self.root())
        code, headers, body = await self.post(url + "/publish/", publish_body(ITEM))
        self.assertEqual((code, body), (200, b"Published\n"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertEqual(self.subscriber.contents, [b"hello\n"])

    async def test_publish_answers_json_when_accepted(self) -> None:
        """With ``Accept: application/json`` the answer is ``{"message": "Published"}``;
        ``/publish`` without the slash works too."""
        url = await self.serve(self.root())
        code, headers, body = await self.post(url + "/publish", publish_body(ITEM),
                                              Accept="application/json")
        self.assertEqual((code, json.loads(body)), (200, {"message": "Published"}))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(self.subscriber.contents, [b"hello\n"])

    async def test_answer_waits_for_publish_barriers(self) -> None:
        """A publish is answered only once every barrier (webhook deliveries stored) fired;
        a barrier reporting a failed store write turns the answer into a 503."""
        root = self.root()
        held: list[Deferred[bool]] = []

        def barrier() -> Deferred[bool]:
            held.append(Deferred())
            return held[-1]

        root.add_publish_barrier(barrier)
        url = await self.serve(root)
        answered = Deferred.fromCoroutine(self.post(url + "/publish/", publish_body(ITEM)))
        await wait_until(lambda: held, message="the publish never reached the barrier")
        self.assertNoResult(answered)
        held[0].callback(True)
        code, _headers, body = await answered
        self.assertEqual((code, body), (200, b"Published\n"))

        answered = Deferred.fromCoroutine(self.post(url + "/publish/", publish_body(ITEM)))
        await wait_until(lambda: len(held) == 2,
                         message="the second publish never reached the barrier")
        held[1].callback(False)
        code, _headers, body = await answered
        self.assertEqual(code, 503)
        self.assertIn(b"could not be stored", body)

    async def test_any_content_type_is_read_as_json(self) -> None:
        """As Pushpin, the body is JSON whatever the Content-Type says (forms not parsed)."""
        url = await self.serve(self.root())
        for content_type in ("text/plain", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x"):
            code, _headers, body = await self.post(url + "/publish/", publish_body(ITEM),
                                                   **{"Content-Type": content_type})
            self.assertEqual((code, body), (200, b"Published\n"), content_type)
        self.assertEqual(len(self.subscriber.received), 3)

    async def test_bad_bodies_get_400_naming_the_problem(self) -> None:
        """Every kind of bad body gets a 400 with a one-line reason, and nothing is published,
        not even the valid items of the same request."""
        self.bus = RecordingBus()
        url = await self.serve(self.root())
        cases = [
            (b"not json", "Body is not valid JSON."),
            (b"[]", "Body must be a JSON object."),
            (b"{}", "Invalid format: object does not contain 'items' list"),
            (b'{"items": {}}', "Invalid format: object does not contain 'items' list"),
            (publish_body(ITEM, 1), "item 1: item must be an object"),
            (publish_body(ITEM, {"formats": ITEM["formats"]}), "item 1: item has no channel"),
            (publish_body({"channel": "c", "formats": {"nope": {}}}),
             "item 0: Invalid format: unknown format 'nope'"),
            (publish_body({"channel": "c", "formats": {"http-stream": {"content": 5}}}),
             "item 0: Invalid format: http-stream"),
            (publish_body({"channel": "c"}), "item 0: item has no formats"),
        ]
        for request_body, reason in cases:
            code, headers, body = await self.post(url + "/publish/", request_body)
            self.assertEqual(code, 400, request_body)
            self.assertTrue(body.decode().startswith(reason), (request_body, body))
            self.assertEqual(body.count(b"\n"), 1)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertEqual(self.bus.published, [])

    async def test_bad_input_is_logged(self) -> None:
        """A rejected publish is logged at info with the peer and the reason."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        url = await self.serve(self.root())
        await self.post(url + "/publish/", b"{oops")
        rejected = [e for e in events if e.get("reason") == "Body is not valid JSON."]
        self.assertEqual(len(rejected), 1)
        self.assertEqual(rejected[0]["log_level"], LogLevel.info)
        self.assertTrue(rejected[0]["peer"].startswith("127.0.0.1:"))

    async def test_success_is_not_logged(self) -> None:
        """No per-request log line for a good publish (the access log is off too)."""
        url = await self.serve(self.root())
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.post(url + "/publish/", publish_body(ITEM))
        # The HTTP client's factory logs its own start and stop; nothing else may appear.
        server_events = [e.get("log_text", e["log_format"]) for e in events
                         if e["log_level"] >= LogLevel.info and "factory" not in e]
        self.assertEqual(server_events, [])

    async def test_get_publish_is_405_with_allow(self) -> None:
        """``GET /publish/`` gets 405 with ``Allow: POST``, as Pushpin."""
        url = await self.serve(self.root())
        for path in ("/publish/", "/publish"):
            code, headers, body = await self.get(url + path)
            self.assertEqual((code, body), (405, b"Method not allowed: GET.\n"))
            self.assertEqual(headers.getRawHeaders(b"allow"), [b"POST"])

    async def test_index_and_unknown_paths(self) -> None:
        """``GET /`` is 200; an unknown path is 404, below /publish/ too."""
        url = await self.serve(self.root())
        code, _headers, body = await self.get(url + "/")
        self.assertEqual((code, body), (200, b"fanout_tx publish API\n"))
        for path in ("/nothing", "/publish/extra"):
            code, _headers, body = await self.get(url + path)
            self.assertEqual((code, body), (404, b"Not Found\n"), path)

    async def test_recover_asks_every_subscriber(self) -> None:
        """``POST /recover`` re-requests every held session; other methods get 405."""
        url = await self.serve(self.root())
        code, _headers, body = await self.post(url + "/recover", b"")
        self.assertEqual((code, body, self.subscriber.recovered), (200, b"Updated\n", 1))
        code, headers, _body = await self.get(url + "/recover")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"POST"]))

    async def test_bus_unavailable_is_503(self) -> None:
        """When the bus cannot share the items (Redis away) the publisher gets a 503 with the
        reason, so it retries; the event is logged as a warning."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.bus = RecordingBus(BusUnavailableError("redis is down"))
        url = await self.serve(self.root())
        code, _headers, body = await self.post(url + "/publish/", publish_body(ITEM))
        self.assertEqual((code, body), (503, b"Service unavailable: redis is down\n"))
        self.assertEqual([e["log_level"] for e in events if e.get("reason") == "redis is down"],
                         [LogLevel.warn])

    async def test_other_bus_failure_is_500_and_logged(self) -> None:
        """An unexpected bus failure is a 500 without details, and the traceback is logged."""
        self.bus = RecordingBus(RuntimeError("boom"))
        url = await self.serve(self.root())
        code, _headers, body = await self.post(url + "/publish/", publish_body(ITEM))
        self.assertEqual((code, body), (500, b"Internal error while publishing.\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_bad_request_does_not_disturb_a_concurrent_one(self) -> None:
        """While a bad request is half-sent on one connection, a good publish on another goes
        through; the bad one then gets its 400."""
        url = await self.serve(self.root())
        bad = await self.raw(b"POST /publish/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Content-Length: 10\r\n\r\n{\"items")
        code, _headers, body = await self.post(url + "/publish/", publish_body(ITEM))
        self.assertEqual((code, body), (200, b"Published\n"))
        bad.transport.write(b"\": 1}")
        answer = await bad.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertEqual(self.subscriber.contents, [b"hello\n"])


class BodyLimitTests(PublishApiCase):
    max_body_size = 200

    async def test_oversized_body_is_413(self) -> None:
        """A body over ``push_in_http_max_body_size`` gets 413 and nothing is published."""
        url = await self.serve(self.root())
        big = publish_body({"channel": "c", "formats": {"http-stream": {"content": "x" * 300}}})
        code, _headers, body = await self.post(url + "/publish/", big)
        self.assertEqual((code, body), (413, b"Request body too large.\n"))
        self.assertEqual(self.subscriber.received, [])

    async def test_oversized_chunked_body_is_413(self) -> None:
        """A chunked body (no Content-Length) is counted as it arrives: 413 past the limit."""
        await self.serve(self.root())
        chunk = b"%x\r\n%s\r\n" % (150, b" " * 150)
        client = await self.raw(b"POST /publish/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n" + chunk + chunk
                                + b"0\r\n\r\n")
        answer = await client.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertTrue(answer.endswith(b"Request body too large.\n"), answer)

    async def test_body_at_the_limit_is_accepted(self) -> None:
        """Exactly ``max_body_size`` bytes is still fine."""
        url = await self.serve(self.root())
        body = publish_body(ITEM)
        body += b" " * (self.max_body_size - len(body))
        code, _headers, answer = await self.post(url + "/publish/", body)
        self.assertEqual((code, answer), (200, b"Published\n"))


class BodyBufferTests(SynchronousTestCase):
    def test_body_past_the_limit_is_not_stored(self) -> None:
        """Bytes past the limit are counted and dropped as they arrive, never buffered."""
        clock = Clock()
        root = PublishRoot(RecordingBus(), Router(clock), BearerAuth(b"", "", clock))
        site = PublishSite(root, 1500, clock)
        requests: list[LimitedRequest] = []
        site.requestFactory = lambda *args, **kwargs: requests.append(
            LimitedRequest(*args, **kwargs)) or requests[-1]
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /publish/ HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            channel.dataReceived(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        [request] = requests
        self.assertTrue(request.body_too_large)
        self.assertEqual(request.content.getvalue(), b"")
        channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class AuthTests(PublishApiCase):
    async def serve_with_auth(self) -> str:
        return await self.serve(self.root(KEY, "publisher"))

    async def assert_refused(self, url: str, reason: str, **headers: str) -> None:
        code, response_headers, body = await self.post(url + "/publish/", publish_body(ITEM),
                                                       **headers)
        self.assertEqual((code, body.decode()), (401, reason + "\n"))
        self.assertEqual(response_headers.getRawHeaders(b"www-authenticate"), [b"Bearer"])

    async def test_missing_or_malformed_authorization_is_401(self) -> None:
        """Without a Bearer token every publish is refused with 401 and a reason, logged."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        url = await self.serve_with_auth()
        await self.assert_refused(url, "Authorization required: send a Bearer token.")
        await self.assert_refused(url, "Authorization must be a Bearer token.",
                                  Authorization="Basic dXNlcjpwYXNz")
        await self.assert_refused(url, "Invalid token: token is not a JWT.",
                                  Authorization="Bearer nonsense")
        self.assertEqual(self.subscriber.received, [])
        refused = [e for e in events if e["log_format"].startswith("publish API request refused")]
        self.assertEqual([e["log_level"] for e in refused], [LogLevel.warn] * 3)

    async def test_bad_tokens_are_401(self) -> None:
        """Wrong key, expired (past the 30 s leeway), no exp, wrong issuer: all 401."""
        url = await self.serve_with_auth()
        wrong_key = b"Bearer " + encode_hs256({"iss": "publisher", "exp": int(NOW) + 60},
                                              b"other").encode()
        cases = [
            (wrong_key, "Invalid token: invalid signature."),
            (publish_token(exp=int(NOW) - 31), "Invalid token: token has expired."),
            (publish_token(exp=None), "Invalid token: token has no exp claim."),
            (publish_token(exp="soon"), "Invalid token: exp claim must be a number."),
            (publish_token(iss="someone-else"), "Invalid token: wrong issuer."),
        ]
        for header, reason in cases:
            await self.assert_refused(url, reason, Authorization=header.decode())
        self.assertEqual(self.subscriber.received, [])

    async def test_valid_token_publishes(self) -> None:
        """A valid token passes, also one expired by less than the 30 s leeway."""
        url = await self.serve_with_auth()
        for header in (publish_token(), publish_token(exp=int(NOW) - 29)):
            code, _headers, body = await self.post(url + "/publish/", publish_body(ITEM),
                                                   Authorization=header.decode())
            self.assertEqual((code, body), (200, b"Published\n"))
        self.assertEqual(len(self.subscriber.received), 2)

    async def test_index_is_public_other_paths_are_not(self) -> None:
        """``GET /`` needs no token; ``POST /``, ``/recover`` and unknown paths do."""
        url = await self.serve_with_auth()
        code, _headers, _body = await self.get(url + "/")
        self.assertEqual(code, 200)
        for path in ("/", "/recover", "/nothing"):
            code, _headers, _body = await self.post(url + path, b"")
            self.assertEqual(code, 401, path)
        self.assertEqual(self.subscriber.recovered, 0)

    async def test_mounted_children(self) -> None:
        """A public mount is reachable without a token, a private one is not; a name can be
        mounted only once."""
        root = self.root(KEY, "publisher")
        root.mount(b"metrics", TextPage(200, "metrics"), public=True)
        root.mount(b"webhooks", TextPage(200, "webhooks"))
        self.assertRaises(ValueError, root.mount, b"publish", Resource())
        url = await self.serve(root)
        code, _headers, body = await self.get(url + "/metrics")
        self.assertEqual((code, body), (200, b"metrics\n"))
        code, _headers, _body = await self.get(url + "/webhooks")
        self.assertEqual(code, 401)
        code, _headers, body = await self.get(url + "/webhooks",
                                              Authorization=publish_token().decode())
        self.assertEqual((code, body), (200, b"webhooks\n"))


class ServiceTests(TestCase):
    """The ``publish-http`` service from tap.build_service, with PyPI gripcontrol as client."""

    async def start(self, handler_lines: str = "") -> tuple[str, Core]:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "routes").write_text("* 127.0.0.1:8080\n")
        (folder / "fanout.conf").write_text(
            "[handler]\npush_in_http_addr = 127.0.0.1\npush_in_http_port = 0\n" + handler_lines)
        _root, core = build_service(load_settings(str(folder / "fanout.conf")), reactor)
        service = _root.getServiceNamed("publish-http")
        self.assertIsInstance(core.publish_root, PublishRoot)
        self.assertIsNone(service._waitingForPort)  # building binds nothing
        service.factory = factory = TrackingFactory(service.factory)
        service.startService()
        self.addCleanup(factory.wait_closed)
        self.addCleanup(service.stopService)
        port = await listening_port(service)
        return f"http://127.0.0.1:{port.getHost().port}", core

    @staticmethod
    def grip_publish(config: dict[str, Any]) -> Deferred[str | None]:
        """Publish one http-stream item with gripcontrol (blocking, so in a thread); fires
        with gripcontrol's error text, or None on success."""

        def publish() -> str | None:
            publisher = GripPubControl(config)
            try:
                publisher.publish_http_stream("c", "from gripcontrol\n", blocking=True)
            except ValueError as e:
                # Only the text leaves the thread: the traceback would keep requests'
                # connection alive past session.close().
                return str(e)
            finally:
                for client in publisher.clients:
                    client.requests_session.close()
            return None

        return deferToThread(publish)

    async def test_gripcontrol_publishes_without_auth(self) -> None:
        """gripcontrol's GripPubControl publishes through the API when no key is set."""
        url, core = await self.start()
        subscriber = RecordingSubscriber()
        core.router.subscribe("c", subscriber)
        self.assertIsNone(await self.grip_publish({"control_uri": url}))
        self.assertEqual(subscriber.contents, [b"from gripcontrol\n"])

    async def test_gripcontrol_publishes_with_auth(self) -> None:
        """With ``push_in_http_key``/``push_in_http_iss`` set, gripcontrol's ``control_iss`` and
        ``key`` are accepted, and a wrong key is refused with 401."""
        key = b"a publish key of at least 32 bytes"
        url, core = await self.start(f"push_in_http_key = base64:{b64encode(key).decode()}\n"
                                     "push_in_http_iss = me\n")
        subscriber = RecordingSubscriber()
        core.router.subscribe("c", subscriber)
        config = {"control_uri": url, "control_iss": "me", "key": key}
        self.assertIsNone(await self.grip_publish(config))
        self.assertEqual(subscriber.contents, [b"from gripcontrol\n"])
        error = await self.grip_publish({**config, "key": key.upper()})
        self.assertIn("received failed status code 401", error)
        self.assertIn("Invalid token: invalid signature.", error)
        self.assertEqual(len(subscriber.received), 1)

    async def test_gripcontrol_key_alone_is_a_bearer(self) -> None:
        """gripcontrol with ``key`` and no ``control_iss`` (Fastly Fanout's setup) sends
        ``Bearer <key>``: the key itself passes; another one is refused (issue #18)."""
        url, core = await self.start("push_in_http_key = a-publish-key\n")
        subscriber = RecordingSubscriber()
        core.router.subscribe("c", subscriber)
        self.assertIsNone(await self.grip_publish({"control_uri": url, "key": "a-publish-key"}))
        self.assertEqual(subscriber.contents, [b"from gripcontrol\n"])
        for wrong in ("a-publish-kez", "a-publish-key-longer", ""):
            error = await self.grip_publish({"control_uri": url, "key": wrong})
            self.assertIn("received failed status code 401", error)
        self.assertEqual(len(subscriber.received), 1)
