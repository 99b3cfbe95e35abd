"""Issue #18: what real GRIP stacks do that Pushpin accepts, over real sockets to the whole
service tree (tap.build_service) on loopback."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import zmq
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from fanout_tx.config.routes import parse_routes
from fanout_tx.config.settings import Config, XmppConfig, parse_config
from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.router import Router
from fanout_tx.inputs.zmq_ingest import ZmqSubInput
from fanout_tx.ops.sig_warnings import signing_warnings
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.ws import events as ev
from fanout_tx.transports.xmpp.component import build_xmpp
from tests.support.helpers import RecordingBus, RecordingSubscriber, wait_until
from tests.support.ops_fixtures import Server
from tests.support.proxy_fixtures import ProxyHarness, Started, grip, origin_on_loopback
from tests.support.services import free_port
from tests.support.ws import WsTestMixin, events_reply, grip_echo, listen_endpoint


def zmq_peer(test: TestCase, socket_type: int, endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    test.addCleanup(sock.close)
    sock.connect(endpoint)
    return sock


RAW = b"\x00\xff\xfe binary"


class PublishFormatTests(TestCase):
    timeout = 20

    async def test_close_with_empty_content_ends_the_stream(self) -> None:
        """The npm HttpStreamFormat(null, true) sends content with action close: accepted
        (content ignored, as Pushpin), and the held stream ends."""
        server = await Server(self).start()
        client = await server.raw("/stream")
        await server.held(1)
        await server.publish(**{"http-stream": {"action": "close", "content": ""}})
        await wait_until(lambda: client.data.endswith(b"\r\n0\r\n\r\n"))
        self.assertIn(b"stream open\n", client.data)
        await server.held(0)

    async def test_hint_ignores_send_only_fields(self) -> None:
        """A hint with content, filters or a body is accepted in every format."""
        server = await Server(self).start()
        code, body = await server.post_json("/publish/", {"items": [{"channel": "room", "formats": {
            "http-stream": {"action": "hint", "content": 5, "content-filters": "x"},
            "http-response": {"action": "hint", "body": 7, "code": "x"},
            "ws-message": {"action": "hint", "content": 1}}}]})
        self.assertEqual((code, body), (200, b"Published\n"))

    async def _binary_over_zmq(self, input_name: str, socket_type: int,
                               parts: list[bytes]) -> None:
        server = await Server(self).start()
        side = await server.websocket()
        [endpoint] = server.root.getServiceNamed(input_name).endpoints
        sock = zmq_peer(self, socket_type, endpoint)

        def delivered() -> bool:
            # A PUB drops what it sends before the SUB's subscription reached it: repeat.
            if len(side.messages) < 2:
                sock.send_multipart(parts)
            return len(side.messages) >= 2

        await wait_until(delivered, interval=0.1)
        self.assertEqual(side.messages[1], (RAW, True))
        side.client.sendClose(1000)
        await side.closed

    async def test_tnetstring_content_bin_is_raw_on_pull(self) -> None:
        """A tnetstring ws-message's content-bin is the bytes themselves (as Pushpin), not
        base64 and not refused as "not UTF-8"."""
        item = {"channel": "room", "formats": {"ws-message": {"content-bin": RAW}}}
        await self._binary_over_zmq("zmq-pull", zmq.PUSH, [tnetstring.dumps(item)])

    async def test_tnetstring_content_bin_is_raw_on_sub(self) -> None:
        """The same through the SUB input ([channel, payload])."""
        item = {"formats": {"ws-message": {"content-bin": RAW}}}
        await self._binary_over_zmq("zmq-sub", zmq.PUB, [b"room", b"T" + tnetstring.dumps(item)])


def reliable_stream(filters: str = "") -> Any:
    """A reliable stream on ``news`` from prev-id 1 for user alice, with a next link."""
    return lambda r: grip(r, b"", Grip_Hold="stream", Grip_Set_Meta="user=alice",
                          Grip_Channel=f"news; prev-id=1{filters}",
                          Grip_Link="</r/next>; rel=next; timeout=60")


class SequenceTests(TestCase):
    """Last ids on reliable holds: filtered items still count, missing prev-ids do not."""

    timeout = 15

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, clock=task.Clock())
        self.fetches: list[Request] = []

    def item(self, item_id: str, prev_id: str | None, content: str, **meta: str) -> None:
        item: dict[str, Any] = {"channel": "news", "id": item_id, "meta": meta, "formats": {
            "http-stream": {"content": content}, "http-response": {"body": content}}}
        if prev_id is not None:
            item["prev-id"] = prev_id
        self.proxy.publish_item(item)

    def link_answers(self, body: bytes, prev_id: str) -> None:
        def next_link(request: Request) -> bytes:
            self.fetches.append(request)
            return grip(request, body, Grip_Hold="stream", Grip_Channel=f"news; prev-id={prev_id}",
                        Grip_Link="</r/next>; rel=next; timeout=60")
        self.proxy.handle(b"/r/next", next_link)

    async def open(self, path: bytes = b"/r") -> Started:
        started = Started(self.proxy, path)
        await wait_until(lambda: self.proxy.router.has_subscribers("news"))
        await started.headers_arrived()
        return started

    async def test_skipped_item_advances_the_stream(self) -> None:
        """skip_users drops item 2 for alice; item 3 (prev-id 2) follows without a gap, so
        no recovery replays item 2 to the user it skipped (django-eventstream)."""
        for filters in ("; filter=skip-users", "; filter=skip-self", "; filter=require-sub"):
            self.proxy = ProxyHarness(self, clock=task.Clock())  # fresh last ids
            self.fetches = []
            self.proxy.handle(b"/r", reliable_stream(filters))
            self.link_answers(b"2 replayed\n", "2")
            started = await self.open()
            meta = {"skip_users": "alice", "sender": "alice", "require_sub": "other"}
            self.item("2", "1", "2 skipped\n", **meta)
            self.item("3", "2", "3\n")
            await wait_until(lambda s=started: s.text().endswith(b"3\n"))
            self.assertEqual((started.text(), self.fetches), (b"3\n", []), filters)

    async def test_content_filter_drop_advances_the_stream(self) -> None:
        """An item a content filter refuses for this subscriber counts too."""
        self.proxy.handle(b"/r", reliable_stream("; filter=var-subst"))
        self.link_answers(b"2 replayed\n", "2")
        started = await self.open()
        self.item("2", "1", "2 for %(nobody)s\n")  # no such meta: refused for this one
        self.item("3", "2", "3\n")
        await wait_until(lambda: started.text().endswith(b"3\n"))
        self.assertEqual((started.text(), self.fetches), (b"3\n", []))

    async def test_skipped_item_advances_the_long_poll(self) -> None:
        """The same for a long-poll: the skipped item moves its last id, the next one
        answers it (not a re-request of the origin)."""
        self.proxy.handle(b"/lp", lambda r: grip(
            r, b"", Grip_Hold="response", Grip_Set_Meta="user=alice",
            Grip_Channel="news; prev-id=1; filter=skip-users"))
        started = Started(self.proxy, b"/lp")
        await wait_until(lambda: self.proxy.router.has_subscribers("news"))
        self.item("2", "1", "2 skipped\n", skip_users="alice")
        self.item("3", "2", "3\n")
        self.assertEqual(await started.body(), b"3\n")
        self.assertEqual(len(self.proxy.origin.requests), 1)

    async def test_item_without_prev_id_recovers_through_the_link(self) -> None:
        """As Pushpin: a missing prev-id on a channel held with one is a mismatch; the stream
        stays open, asks the link (Grip-Last), and the backend's answer is what it gets."""
        self.proxy.handle(b"/r", reliable_stream())
        self.link_answers(b"2 from the link\n", "2")
        started = await self.open()
        self.item("2", None, "2 without prev-id\n")
        await wait_until(lambda: self.fetches)
        self.assertEqual(self.fetches[0].requestHeaders.getRawHeaders(b"grip-last"),
                         [b"news; last-id=1"])
        self.item("3", "2", "3\n")
        await wait_until(lambda: started.text().endswith(b"3\n"))
        self.assertEqual(started.text(), b"2 from the link\n3\n")


class SubLingerTests(TestCase):
    """The SUB input stays subscribed to an emptied channel for a while, as Pushpin."""

    timeout = 15

    def setUp(self) -> None:
        self.router = Router(reactor)
        self.xpub = zmq.Context.instance().socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.addCleanup(self.xpub.close)
        self.xpub.bind("tcp://127.0.0.1:*")

    def start(self, linger: float, max_lingering: int = 100) -> ZmqSubInput:
        sub = ZmqSubInput(reactor, zmq.Context.instance(), RecordingBus(), self.router,
                          [self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)], connect=True,
                          linger=linger, max_lingering=max_lingering)
        sub.startService()
        self.addCleanup(sub.stopService)
        return sub

    async def heard(self, count: int, within: float = 5.0) -> list[bytes]:
        received: list[bytes] = []

        def arrived() -> bool:
            while self.xpub.poll(0, zmq.POLLIN):
                received.append(self.xpub.recv())
            return len(received) >= count

        await wait_until(arrived, timeout=within)
        return received

    async def test_resubscribe_within_the_linger_costs_nothing(self) -> None:
        """A channel emptied and used again within the linger sends no (un)subscribe;
        emptied for longer, it is unsubscribed."""
        self.start(linger=0.5)
        first = RecordingSubscriber()
        self.router.subscribe("ch", first)
        self.assertEqual(await self.heard(1), [b"\x01ch"])
        for _ in range(20):  # a long-poll client polling again and again
            self.router.unsubscribe_all(first)
            self.router.subscribe("ch", first)
        self.router.unsubscribe_all(first)
        started = reactor.seconds()
        self.assertEqual(await self.heard(1), [b"\x00ch"])
        self.assertGreaterEqual(reactor.seconds() - started, 0.4)

    async def test_lingering_channels_are_bounded(self) -> None:
        """Past max_lingering, the longest-lingering channel is unsubscribed at once."""
        sub = self.start(linger=60, max_lingering=2)
        subscriber = RecordingSubscriber()
        for name in ("a", "b", "c"):
            self.router.subscribe(name, subscriber)
        self.assertEqual(sorted(await self.heard(3)), [b"\x01a", b"\x01b", b"\x01c"])
        self.router.unsubscribe_all(subscriber)
        self.assertEqual(await self.heard(1), [b"\x00a"])
        self.assertEqual(len(sub._lingering), 2)


class SigningWarningTests(TestCase):
    """Start-up says when origins get unsigned requests, and when the public ``changeme``
    key signs them on a proxy reachable from other hosts."""

    def warnings(self, runner: str, proxy: str, routes: str) -> list[str]:
        config = parse_config(f"[runner]\n{runner}\n[proxy]\n{proxy}\n", "f.conf")
        return signing_warnings(config, parse_routes(routes).routes)

    def test_unsigned_origins(self) -> None:
        [line] = self.warnings("http_port=127.0.0.1:7999", "", "* 127.0.0.1:8080\n")
        self.assertIn("origin requests will not be signed (no Grip-Sig) on every route", line)
        [line] = self.warnings("http_port=127.0.0.1:7999", "",
                               "a.example,sig_key=k 127.0.0.1:8080\n* 127.0.0.1:8080\n"
                               "b.example test\n")
        self.assertIn("on routes at line 2:", line)
        self.assertEqual(self.warnings("http_port=127.0.0.1:7999", "sig_key=mine",
                                       "* 127.0.0.1:8080\n"), [])
        config = parse_config("[xmpp]\nenabled=true\n[proxy]\n", "f.conf")
        lines = signing_warnings(config, parse_routes("* test\n").routes)
        self.assertEqual([line.split(" (")[0] for line in lines],
                         ["XMPP backend requests will not be signed"])

    def test_shipped_key_beyond_loopback(self) -> None:
        for runner in ("http_port=7999", "http_port=0.0.0.0:7999",
                       "http_port=127.0.0.1:7999\nhttps_ports=[::]:443"):
            [line] = self.warnings(runner, "sig_key=changeme", "* 127.0.0.1:8080\n")
            self.assertIn("sig_key is the shipped 'changeme'", line)
        for runner in ("http_port=127.0.0.1:7999", "http_port=localhost:7999,[::1]:7998"):
            self.assertEqual(self.warnings(runner, "sig_key=changeme", "* 127.0.0.1:8080\n"),
                             [], runner)

    async def test_logged_at_start_up(self) -> None:
        """The whole service tree logs it (no sig_key in the config)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await Server(self).start()
        lines = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertTrue(any("will not be signed" in line for line in lines), lines)


class CrossOriginTests(TestCase):
    timeout = 15

    async def test_allow_headers_only_echo_a_preflight(self) -> None:
        """``aco``: Access-Control-Allow-Headers is not on every answer; a preflight's
        requested names (every Access-Control-Request-Headers line) are echoed."""
        proxy = ProxyHarness(self, route="*,aco")
        proxy.handle(b"/", lambda r: b"ok")
        response, _body = await proxy.fetch(b"/", headers=Headers({"Origin": ["http://a.test"]}))
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-headers"))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"http://a.test"])
        response, _body = await proxy.fetch(b"/", method=b"OPTIONS", headers=Headers({
            "Origin": ["http://a.test"], "Access-Control-Request-Method": ["PUT"],
            "Access-Control-Request-Headers": ["X-Foo, Content-Type", "X-Bar"]}))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-headers"),
                         [b"X-Foo, Content-Type, X-Bar"])


def docs_recipe(page: str, marker: str) -> str:
    """The literal block (``::``) of ``docs/<page>`` that contains ``marker``."""
    text = (Path(__file__).parent.parent / "docs" / page).read_text()
    blocks = [textwrap.dedent(block) for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", text)]
    return next(block for block in blocks if marker in block)


class HookReceiver(Resource):
    """Records each delivery's headers as they came on the wire, and its body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    def render_POST(self, request: Request) -> bytes:  # noqa: N802
        headers = {name.decode(): values[0].decode()
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        self.deliveries.append((headers, request.content.read()))
        request.setResponseCode(204)
        return b""


class WebhookRecipeTests(TestCase):
    timeout = 20

    async def test_the_documented_verify_accepts_a_real_delivery(self) -> None:
        """docs/webhooks.rst's verify(), run on a delivery as it arrives (``Webhook-Id``,
        not ``webhook-id``), accepts it, and refuses it once the body is changed."""
        namespace: dict[str, Any] = {}
        exec(docs_recipe("webhooks.rst", "def verify("), namespace)  # noqa: S102
        server = await Server(self).start(webhooks=True)
        receiver = HookReceiver()
        port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, body = await server.post_json("/webhooks/subscriptions", {
            "url": f"http://127.0.0.1:{port.getHost().port}/hook", "channels": ["room"],
            "verify": False})
        self.assertEqual(code, 201, body)
        secret = json.loads(body)["secret"]
        await server.publish(**{"http-request": {"body": "hook item"}})
        await wait_until(lambda: receiver.deliveries)
        headers, delivered = receiver.deliveries[0]
        self.assertIn("Webhook-Id", headers)
        self.assertTrue(namespace["verify"](secret, headers, delivered, set()))
        self.assertFalse(namespace["verify"](secret, headers, delivered + b"!", set()))


class XmppReconnectLogTests(TestCase):
    timeout = 15

    async def test_attempts_log_no_factory_lines(self) -> None:
        """Each reconnect attempt to an unreachable XMPP server logs the link's own error,
        not Twisted's "Starting factory"/"Stopping factory" pair."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        closed = free_port()
        config = Config(xmpp=XmppConfig(enabled=True, host="127.0.0.1", port=closed,
                                        secret="s"))
        component = build_xmpp(config, Router(reactor), reactor,
                               origin_clients(reactor).verified)
        component.startService()
        self.addCleanup(component.stopService)
        await wait_until(lambda: component.link.errors["unreachable"] >= 1)
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any("unreachable" in line for line in lines), lines)
        self.assertFalse([line for line in lines if "factory" in line.lower()], lines)


class OversizedPublishTests(TestCase):
    timeout = 20

    async def test_413_is_a_publish_error(self) -> None:
        """An oversized publish (413) counts in fanout_publish_errors_total{input="http"}, as
        a 400 does; an oversized request elsewhere on the port does not."""
        server = await Server(self).start(extra="[handler]\npush_in_http_max_body_size=200\n")
        code, _body = await server.post_json("/publish/", {"items": [
            {"channel": "room", "formats": {"http-stream": {"content": "x" * 300}}}]})
        self.assertEqual(code, 413)
        code, _body = await server.post_json("/recover", {"pad": "x" * 300})
        self.assertEqual(code, 413)
        samples = await server.metrics()
        self.assertEqual(samples[("fanout_publish_errors_total", (("input", "http"),))], 1)


class RoutePrecedenceTests(TestCase):
    timeout = 15

    async def test_host_route_beats_star_whatever_the_order(self) -> None:
        """docs/proxy.rst "Route matching": a host-specific route on a later line wins over
        an earlier ``*``; other hosts still take ``*``."""
        # First, so its cleanup (waiting for its connections to close) runs after the proxy's.
        _origin, port = origin_on_loopback(self, {b"/": lambda r: b"host origin"})
        proxy = ProxyHarness(self)
        proxy.handle(b"/", lambda r: b"star origin")
        proxy.set_routes(f"* {proxy.origin_address}\nexample.test 127.0.0.1:{port}\n")
        for host, expected in (("example.test", b"host origin"), ("other.test", b"star origin")):
            _response, body = await proxy.fetch(b"/", headers=Headers({"Host": [host]}))
            self.assertEqual(body, expected, host)


def closing_origin(reply_code: int | None) -> Any:
    """A WebSocket-over-HTTP origin (grip_echo) whose answer to the client's CLOSE is a
    CLOSE with ``reply_code`` (``None``: no CLOSE at all)."""
    def answer(events: list[ev.Event], headers: dict[str, str]) -> tuple:
        if events and events[0].name == "CLOSE":
            if reply_code is None:
                return events_reply()
            return events_reply(ev.Event("CLOSE", ev.close_content(reply_code, "origin says")))
        return grip_echo(events, headers)
    return answer


class EchoCloseOrigin(WebSocketServerProtocol):
    """A plain WebSocket origin that answers a close frame with the same code."""

    def onConnect(self, request: Any) -> Any:  # noqa: N802
        return None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.sendMessage(payload, isBinary)


class ClientCloseTests(WsTestMixin, TestCase):
    """As Pushpin, the origin decides the reply to a client's close frame."""

    timeout = 20

    async def close_with(self, code: int) -> tuple[bool, int | None, str]:
        side, client = await self.connect("/ws")
        client.closeHandshakeTimeout = 10  # autobahn's 1 s is short on a loaded machine
        client.sendClose(code, "client bye")
        return await side.closed

    async def test_over_http_the_origins_close_is_the_reply(self) -> None:
        """The client's 4005 goes to the origin as CLOSE; the origin's CLOSE (an echo, or
        another code) is what the client gets back, not an immediate 1000."""
        for origin_code, expected in ((4005, 4005), (4100, 4100)):
            await self.start(closing_origin(origin_code))
            _clean, code, _reason = await self.close_with(4005)
            self.assertEqual(code, expected)
            self.assertEqual(ev.parse_close(self.origin.requests[-1][1][0].content),
                             (4005, "client bye"))

    async def test_over_http_no_close_in_the_answer(self) -> None:
        """An answer without CLOSE: the client gets its own code back."""
        await self.start(closing_origin(None))
        _clean, code, _reason = await self.close_with(4005)
        self.assertEqual(code, 4005)

    async def test_over_http_silent_origin_is_bounded(self) -> None:
        """An origin that does not answer the CLOSE in time: after the wait, the client's
        own code."""
        await self.start(grip_echo)
        self.factory.close_reply_wait = 0.2
        # Hold the CLOSE request: the origin never answers within the wait.
        original = self.origin.render_POST

        def slow(request: Any) -> Any:
            body = request.content.getvalue()
            if ev.decode_events(body)[0].name == "CLOSE":
                self.addCleanup(lambda: request.finish() if not request.finished else None)
                return NOT_DONE_YET
            return original(request)

        self.origin.render_POST = slow
        started = reactor.seconds()
        _clean, code, _reason = await self.close_with(4005)
        self.assertEqual(code, 4005)
        self.assertGreaterEqual(reactor.seconds() - started, 0.15)

    async def test_proxied_origins_close_frame_is_the_reply(self) -> None:
        """WebSocket proxying: the origin's close frame (here echoing 4005) is the reply."""
        factory = WebSocketServerFactory()
        factory.protocol = EchoCloseOrigin
        factory.setProtocolOptions(echoCloseCodeReason=True)
        port = await listen_endpoint().listen(factory)
        self.addCleanup(port.stopListening)
        await self.start_handler(f"* 127.0.0.1:{port.getHost().port}")
        _clean, code, reason = await self.close_with(4005)
        self.assertEqual((code, reason), (4005, "client bye"))
