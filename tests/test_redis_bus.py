"""RedisBus against a real redis-server: several fanout_tx cores in one process, each with
its own Router, share publishes exactly once, in order, across Redis outages (SPEC B3)."""

from __future__ import annotations

import json
import os
import signal
from io import BytesIO
from pathlib import Path
from typing import Any

import zmq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import portforward
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from typing_extensions import override
from zope.interface.verify import verifyObject

from fanout_tx.cluster.redis_bus import RedisBus
from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.core.bus import BusUnavailableError
from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import Item, parse_item
from fanout_tx.core.router import Router
from fanout_tx.tap import Core, build_core, build_service, listening_port, load_settings
from tests.support.helpers import RecordingSubscriber, wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness, grip
from tests.support.services import RedisServer
from tests.support.ws import WsTestMixin, grip_echo

CHANNEL = "news"


class WaitingSubscriber(RecordingSubscriber):
    """A RecordingSubscriber that can be waited on until a given content arrives."""

    def __init__(self) -> None:
        super().__init__(formats=("http-stream",))
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        super().deliver(item, fmt, prepared)
        ready = [w for w in self._waiting if w[0] == fmt.content]
        self._waiting = [w for w in self._waiting if w[0] != fmt.content]
        for _content, waiter in ready:
            waiter.callback(None)

    def wait_for(self, content: bytes, timeout: float = 10.0) -> Deferred[None]:
        if content in self.contents:
            waiter: Deferred[None] = Deferred()
            waiter.callback(None)
            return waiter
        waiter = Deferred()
        self._waiting.append((content, waiter))
        return waiter.addTimeout(timeout, reactor)


class _UnixSide(portforward.ProxyClient):
    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        relay = self.peer.factory
        super().connectionLost(reason)
        relay.lost(self)


class _RelayedConnection(portforward.ProxyServer):
    """One TCP connection, relayed both ways to the redis-server's unix socket."""

    clientProtocolFactory = portforward.ProxyClientFactory

    @override
    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        client = self.clientProtocolFactory()
        client.protocol = _UnixSide
        client.setServer(self)
        self.factory.relayed.append(Deferred())
        reactor.connectUNIX(self.factory.path, client)


class _RelayToUnix(Factory):
    """Listens on TCP, relays each connection to the unix socket at ``path``."""

    protocol = _RelayedConnection

    def __init__(self, path: str) -> None:
        self.path = path
        self.relayed: list[Deferred[None]] = []
        self._ended = 0

    def lost(self, _side: _UnixSide) -> None:
        self.relayed[self._ended].callback(None)
        self._ended += 1

    def closed(self) -> Deferred[Any]:
        """Fires once every relayed unix connection has closed."""
        return gatherResults(self.relayed)


def stream_item(content: str, channel: str = CHANNEL, **extra: Any) -> Item:
    return parse_item({"channel": channel, "formats": {"http-stream": {"content": content}},
                       **extra})


class _RedisCase(TestCase):
    """Starts a private redis-server and builds instances against it."""

    timeout = 60

    def setUp(self) -> None:
        self.redis = RedisServer()
        self.addCleanup(self._stop_redis)
        self.folder = Path(self.mktemp())
        self.folder.mkdir(parents=True)

    def _stop_redis(self) -> None:
        if self.redis.process.poll() is None:
            os.kill(self.redis.process.pid, signal.SIGCONT)
        self.redis.stop()

    def settings(self, url: str, name: str = "a"):
        config = self.folder / f"{name}.conf"
        config.write_text(f"[redis]\nurl = {url}\nprefix = test:\n"
                          "[handler]\npush_in_http_port = 0\n")
        return load_settings(str(config), route_lines=("* 127.0.0.1:1",))

    @inlineCallbacks
    def instance(self, url: str | None = None):
        """A started core whose bus is up, with one subscriber on CHANNEL."""
        core = build_core(self.settings(url or self.redis.url), reactor)
        core.bus.startService()
        self.addCleanup(core.bus.stopService)
        yield core.bus.when_up().addTimeout(10, reactor)
        subscriber = WaitingSubscriber()
        core.router.subscribe(CHANNEL, subscriber)
        return core, subscriber

    @inlineCallbacks
    def instances(self, count: int, url: str | None = None):
        result = []
        for _ in range(count):
            result.append((yield self.instance(url)))
        return result

    async def publish_instance(self) -> tuple[Core, bytes]:
        """Instance A with its ``redis`` and ``publish-http`` services started."""
        root, core = build_service(self.settings(self.redis.url), reactor)
        for name in ("redis", "publish-http"):
            service = root.getServiceNamed(name)
            service.startService()
            self.addCleanup(service.stopService)
        await core.bus.when_up().addTimeout(10, reactor)
        port = await listening_port(root.getServiceNamed("publish-http"))
        return core, b"http://127.0.0.1:%d/publish/" % port.getHost().port

    async def stream_instance(self) -> tuple[ProxyHarness, RedisBus]:
        """Instance B: a proxy in front of a streaming origin, its router on Redis."""
        proxy = ProxyHarness(self)
        proxy.handle(b"/s", lambda request: grip(request, b"start\n", Grip_Hold="stream",
                                                 Grip_Channel=CHANNEL))
        bus = RedisBus(proxy.router, reactor, parse_redis_url(self.redis.url), "test:")
        bus.startService()
        self.addCleanup(bus.stopService)
        await bus.when_up().addTimeout(10, reactor)
        return proxy, bus


class RedisBusTests(_RedisCase):
    @inlineCallbacks
    def test_publish_reaches_every_instance_once(self) -> Any:
        """Items published on A reach the subscribers of A, B and C exactly once each: items
        without ids (so de-duplication cannot hide a double delivery), then a marker after
        which no earlier item can still arrive (the stream is read in order)."""
        (a, sub_a), (b, sub_b), (c, sub_c) = yield self.instances(3)
        verifyObject(IBus, a.bus)
        for text in ("one", "two", "three", "end"):
            yield a.bus.publish([stream_item(text)], "http")
        for subscriber in (sub_b, sub_c):
            yield subscriber.wait_for(b"end")
        expected = [b"one", b"two", b"three", b"end"]
        self.assertEqual([sub_a.contents, sub_b.contents, sub_c.contents], [expected] * 3)
        self.assertEqual([b.bus.received_items, c.bus.received_items], [4, 4])

    @inlineCallbacks
    def test_thousand_items_in_order(self) -> Any:
        """1,000 separate publishes on A arrive on B complete and in publisher order."""
        (a, _sub_a), (_b, sub_b) = yield self.instances(2)
        expected = [str(n).encode() for n in range(1000)]
        for content in expected:
            a.bus.publish([stream_item(content.decode())], "http")
        yield sub_b.wait_for(b"999", timeout=30)
        self.assertEqual(sub_b.contents, expected)

    @inlineCallbacks
    def test_duplicate_id_on_another_instance_is_dropped(self) -> Any:
        """The same id published on A and then on B (a publisher's retry through the load
        balancer) reaches every subscriber once."""
        (a, sub_a), (b, sub_b) = yield self.instances(2)
        yield a.bus.publish([stream_item("first", id="x1")], "http")
        yield sub_b.wait_for(b"first")
        yield b.bus.publish([stream_item("retry", id="x1")], "http")
        yield b.bus.publish([stream_item("end")], "http")
        yield sub_a.wait_for(b"end")
        self.assertEqual(sub_a.contents, [b"first", b"end"])
        self.assertEqual(sub_b.contents, [b"first", b"end"])

    @inlineCallbacks
    def test_sequencing_across_instances(self) -> Any:
        """An item whose predecessor is published later on another instance is held back
        on every instance until the predecessor arrives, then both go out in order."""
        (a, sub_a), (b, sub_b), (_c, sub_c) = yield self.instances(3)
        yield a.bus.publish([stream_item("0", id="0")], "http")
        yield sub_c.wait_for(b"0")
        yield sub_b.wait_for(b"0")
        yield b.bus.publish([stream_item("2", id="2", **{"prev-id": "1"})], "http")
        yield a.bus.publish([stream_item("1", id="1", **{"prev-id": "0"})], "http")
        for subscriber in (sub_a, sub_b, sub_c):
            yield subscriber.wait_for(b"2")
            self.assertEqual(subscriber.contents, [b"0", b"1", b"2"])

    @inlineCallbacks
    def test_last_ids_shared_with_running_and_late_instances(self) -> Any:
        """Per-channel last ids set on A are known on B (running) and on C (started later,
        from the snapshot), also for channels nobody subscribes to on B or C."""
        (a, _sub_a), (b, sub_b) = yield self.instances(2)
        yield a.bus.publish([stream_item("x", channel="quiet", id="q7"),
                             stream_item("y", id="n3")], "http")
        yield sub_b.wait_for(b"y")
        c, _sub_c = yield self.instance()
        for core in (a, b, c):
            self.assertEqual((core.router.last_id("quiet"), core.router.last_id(CHANNEL)),
                             ("q7", "n3"))

    @inlineCallbacks
    def test_reader_reconnect_loses_nothing(self) -> Any:
        """Items published while B's stream connection is away reach B once it is back."""
        (a, _sub_a), (b, sub_b) = yield self.instances(2)
        b.bus.getServiceNamed("reader").drop()
        yield b.bus.when_down().addTimeout(5, reactor)
        yield a.bus.publish([stream_item("while away")], "http")
        yield a.bus.publish([stream_item("end")], "http")
        yield sub_b.wait_for(b"end")
        self.assertEqual(sub_b.contents, [b"while away", b"end"])

    @inlineCallbacks
    def test_trimmed_entries_are_reported_and_last_ids_reloaded(self) -> Any:
        """Entries trimmed from the stream before B's reader got them show as a hole in the
        entry numbers: B logs it, reloads the last ids (also of channels only the lost
        entries carried) and goes on with the entries still there."""
        a = RedisBus(Router(reactor), reactor, parse_redis_url(self.redis.url), "test:",
                     stream_maxlen=10)
        a.startService()
        self.addCleanup(a.stopService)
        b, sub_b = yield self.instance()
        yield a.when_up()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        reader = b.bus.getServiceNamed("reader")
        yield reader.stopService()
        published = [a.publish([stream_item("q", channel="quiet", id="q1")], "http")]
        for n in range(300):
            published.append(a.publish([stream_item(str(n), id=f"i{n}")], "http"))
        yield gatherResults(published)
        reader.startService()
        yield sub_b.wait_for(b"299")
        yield wait_until(lambda: b.router.last_id("quiet") == "q1")
        self.assertEqual(b.router.last_id(CHANNEL), "i299")
        self.assertNotIn(b"0", sub_b.contents)
        missed = [e["count"] for e in events
                  if e.get("log_source") is b.bus and "missed" in e["log_format"]]
        self.assertEqual(len(missed), 1)
        self.assertEqual(missed[0] + len(sub_b.contents), 301)

    @inlineCallbacks
    def test_flushed_script_cache_recovers(self) -> Any:
        """After SCRIPT FLUSH a publish fails once; the bus reconnects, loads the script
        again and shares the next publish."""
        (a, _sub_a), (_b, sub_b) = yield self.instances(2)
        yield a.bus.getServiceNamed("commands").command("SCRIPT", "FLUSH")
        yield self.assertFailure(a.bus.publish([stream_item("lost")], "http"),
                                 BusUnavailableError)
        yield a.bus.when_down().addTimeout(5, reactor)
        yield a.bus.when_up().addTimeout(10, reactor)
        yield a.bus.publish([stream_item("shared")], "http")
        yield sub_b.wait_for(b"shared")
        self.assertEqual(sub_b.contents, [b"shared"])

    @inlineCallbacks
    def test_redis_restart(self) -> Any:
        """Redis killed mid-run: both instances notice within 5 s, local delivery goes on,
        publish fails with BusUnavailableError; after Redis returns (within 10 s) delivery
        across instances resumes without restarting anything."""
        (a, sub_a), (b, sub_b) = yield self.instances(2)
        yield a.bus.publish([stream_item("before")], "http")
        yield sub_b.wait_for(b"before")
        self.redis.stop(signal.SIGKILL)
        yield a.bus.when_down().addTimeout(5, reactor)
        yield b.bus.when_down().addTimeout(5, reactor)
        self.assertEqual((a.bus.state, b.bus.state), ("down", "down"))
        during = a.bus.publish([stream_item("during")], "http")
        self.assertEqual(sub_a.contents, [b"before", b"during"])
        yield self.assertFailure(during, BusUnavailableError)
        self.redis.restart()
        yield a.bus.when_up().addTimeout(10, reactor)
        yield b.bus.when_up().addTimeout(10, reactor)
        yield a.bus.publish([stream_item("after")], "http")
        yield sub_b.wait_for(b"after")
        self.assertEqual(sub_b.contents, [b"before", b"after"])
        self.assertEqual(sub_a.contents, [b"before", b"during", b"after"])

    @inlineCallbacks
    def test_hung_redis(self) -> Any:
        """A Redis that stops answering (SIGSTOP) fails publishes and marks the bus down
        within 5 s; when it answers again, sharing resumes."""
        (a, sub_a), (_b, sub_b) = yield self.instances(2)
        os.kill(self.redis.process.pid, signal.SIGSTOP)
        stuck = a.bus.publish([stream_item("stuck")], "http")
        self.assertEqual(sub_a.contents, [b"stuck"])
        yield self.assertFailure(stuck.addTimeout(5, reactor), BusUnavailableError)
        yield a.bus.when_down().addTimeout(5, reactor)
        os.kill(self.redis.process.pid, signal.SIGCONT)
        yield a.bus.when_up().addTimeout(10, reactor)
        yield a.bus.publish([stream_item("again")], "http")
        yield sub_b.wait_for(b"again")
        self.assertEqual(sub_b.contents[-1], b"again")

    @inlineCallbacks
    def test_tcp_url(self) -> Any:
        """``redis://host:port`` URLs work like the ``unix://`` ones the other tests use
        (here through a relay on a port-0 listener: no race for a free port)."""
        factory = _RelayToUnix(self.redis.unix_socket)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(factory.closed)
        self.addCleanup(port.stopListening)
        url = f"redis://127.0.0.1:{port.getHost().port}/0"
        (a, _sub_a), (_b, sub_b) = yield self.instances(2, url)
        yield a.bus.publish([stream_item("via tcp")], "http")
        yield sub_b.wait_for(b"via tcp")
        self.assertEqual(sub_b.contents, [b"via tcp"])
        self.assertEqual(len(factory.relayed), 4)  # two connections per bus, all through TCP


class WiringTests(_RedisCase):
    def test_service_tree_has_redis_child(self) -> None:
        """With [redis] url set, the core's bus is a RedisBus and the tree has a ``redis``
        child that owns its connections; building connects to nothing."""
        root, core = build_service(self.settings(self.redis.url), reactor)
        self.assertIsInstance(core.bus, RedisBus)
        self.assertIs(root.getServiceNamed("redis"), core.bus)
        self.assertEqual(core.bus.state, "down")

    async def test_webhooks_off_here_but_subscribed_elsewhere(self) -> None:
        """An instance with webhooks off warns, once Redis is up, when other instances keep
        webhook subscriptions there: items published through it would miss them while
        no webhooks instance runs."""
        seed = RedisBus(Router(reactor), reactor, parse_redis_url(self.redis.url), "test:")
        seed.startService()
        self.addCleanup(seed.stopService)
        await seed.when_up().addTimeout(10, reactor)
        await seed.command("HSET", "test:webhooks:subs", "sub1", "{}")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        config = self.folder / "off.conf"
        config.write_text(f"[redis]\nurl = {self.redis.url}\nprefix = test:\n"
                          "[webhooks]\nenabled = false\n[handler]\npush_in_http_port = 0\n")
        _root, core = build_service(load_settings(str(config), route_lines=("* x:1",)), reactor)
        core.bus.startService()
        self.addCleanup(core.bus.stopService)
        await wait_until(lambda: any("webhook subscriptions are in Redis" in e["log_format"]
                                     for e in logged))
        [warning] = [e for e in logged if "webhook subscriptions are in Redis" in e["log_format"]]
        self.assertEqual((warning["log_level"], warning["count"]), (LogLevel.warn, 1))

    def test_no_url_keeps_local_bus(self) -> None:
        config = self.folder / "local.conf"
        config.write_text("[redis]\nurl =\n")
        core: Core = build_core(load_settings(str(config), route_lines=("* x:1",)), reactor)
        self.assertNotIsInstance(core.bus, RedisBus)


class ZmqSubAcrossInstancesTests(_RedisCase):
    async def test_sub_input_is_not_shared(self) -> None:
        """Two instances whose SUB inputs connect to one XPUB publisher: PUB/SUB already
        gives each instance the items of its own subscribers, so an item without an id
        reaches each subscriber once (sharing it through Redis too would double it)."""
        context = zmq.Context.instance()
        xpub = context.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every peer's subscription, not the first
        self.addCleanup(xpub.close)
        xpub.bind("tcp://127.0.0.1:*")
        spec = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        subscribers, cores = [], []
        for name in ("a", "b"):
            config = self.folder / f"{name}.conf"
            config.write_text(
                f"[redis]\nurl = {self.redis.url}\nprefix = test:\n[handler]\n"
                f"push_in_http_port = 0\npush_in_spec = tcp://127.0.0.1:0\n"
                f"push_in_sub_specs = {spec}\npush_in_sub_connect = true\n")
            root, core = build_service(load_settings(str(config), route_lines=("* x:1",)),
                                       reactor)
            subscriber = WaitingSubscriber()
            core.router.subscribe(CHANNEL, subscriber)
            subscribers.append(subscriber)
            cores.append(core)
            for service_name in ("redis", "zmq-sub"):
                service = root.getServiceNamed(service_name)
                service.startService()
                self.addCleanup(service.stopService)
            await core.bus.when_up().addTimeout(10, reactor)
        seen: list[bytes] = []

        def both_subscribed() -> bool:
            while xpub.poll(0, zmq.POLLIN):
                seen.append(xpub.recv())
            return seen.count(b"\x01" + CHANNEL.encode()) == 2

        await wait_until(both_subscribed)
        for content in ("no id", "end"):
            payload = {"formats": {"http-stream": {"content": content}}}
            xpub.send_multipart([CHANNEL.encode(), b"J" + json.dumps(payload).encode()])
        for subscriber in subscribers:
            await subscriber.wait_for(b"end")
        # A marker through Redis: the stream is ordered, so any copy of the SUB items
        # shared through it (appended when they arrived) is read before the marker.
        await cores[0].input_bus.publish([stream_item("marker")], "http")
        for subscriber in subscribers:
            await subscriber.wait_for(b"marker")
        self.assertEqual([s.contents for s in subscribers],
                         [[b"no id", b"end", b"marker"]] * 2)


async def post_items(url: bytes, items: list[dict]) -> tuple[int, bytes]:
    """POST ``{"items": items}`` to a publish API; (status, body)."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    body = FileBodyProducer(BytesIO(json.dumps({"items": items}).encode()))
    response = await agent.request(b"POST", url, None, body)
    collect = Collect()
    response.deliverBody(collect)
    return response.code, await collect.done


class EndToEndTests(_RedisCase):
    """A's real publish API and B's real GRIP proxy with a real HTTP-stream client."""

    async def test_http_publish_reaches_stream_client_on_other_instance(self) -> None:
        """Items POSTed to A's publish API reach an HTTP-stream client held by B's proxy
        exactly once, in order; closing through A ends B's stream."""
        _a, url = await self.publish_instance()
        proxy, _bus = await self.stream_instance()
        response = await proxy.request(b"/s")
        collect = Collect()
        response.deliverBody(collect)
        proxy.bodies.append(collect.done)
        await wait_until(lambda: proxy.router.has_subscribers(CHANNEL))
        for content in ("one\n", "two\n"):
            status, _body = await post_items(
                url, [{"channel": CHANNEL, "formats": {"http-stream": {"content": content}}}])
            self.assertEqual(status, 200)
        close = {"channel": CHANNEL, "formats": {"http-stream": {"action": "close"}}}
        await post_items(url, [close])
        self.assertEqual(await collect.done, b"start\none\ntwo\n")

    async def test_publish_api_answers_503_while_redis_is_away(self) -> None:
        """During an outage A's publish API answers 503 (local subscribers still get the
        item); after Redis returns, the same publish is 200 and reaches B."""
        a, url = await self.publish_instance()
        local = WaitingSubscriber()
        a.router.subscribe(CHANNEL, local)
        _b, remote = await self.instance()
        item = {"channel": CHANNEL, "id": "r1", "formats": {"http-stream": {"content": "x"}}}
        self.redis.stop(signal.SIGKILL)
        await a.bus.when_down().addTimeout(5, reactor)
        status, body = await post_items(url, [item])
        self.assertEqual((status, local.contents), (503, [b"x"]))
        self.assertIn(b"Redis", body)
        self.redis.restart()
        await a.bus.when_up().addTimeout(10, reactor)
        self.assertEqual((await post_items(url, [item]))[0], 200)  # the publisher's retry
        await remote.wait_for(b"x")
        self.assertEqual((local.contents, remote.contents), ([b"x"], [b"x"]))


class WebSocketEndToEndTests(WsTestMixin, _RedisCase):
    """As above, plus C: a WebSocket-over-HTTP handler whose router is on Redis too."""

    async def test_http_publish_reaches_stream_and_websocket_clients(self) -> None:
        """One publish to A's API with http-stream and ws-message formats reaches the
        HTTP-stream client on B and the WebSocket client on C exactly once each."""
        _a, url = await self.publish_instance()
        proxy, _bus = await self.stream_instance()
        await self.start(grip_echo)  # C: self.router, self.handler
        bus_c = RedisBus(self.router, reactor, parse_redis_url(self.redis.url), "test:")
        bus_c.startService()
        self.addCleanup(bus_c.stopService)
        await bus_c.when_up().addTimeout(10, reactor)
        side, client = await self.connect()
        client.sendMessage(b"sub:" + CHANNEL.encode())
        await side.wait_messages(1)  # "subscribed"
        response = await proxy.request(b"/s")
        collect = Collect()
        response.deliverBody(collect)
        proxy.bodies.append(collect.done)
        await wait_until(lambda: proxy.router.has_subscribers(CHANNEL))
        for content in ("one", "two"):
            status, _body = await post_items(url, [{"channel": CHANNEL, "formats": {
                "http-stream": {"content": content + "\n"}, "ws-message": {"content": content},
            }}])
            self.assertEqual(status, 200)
        await post_items(url, [{"channel": CHANNEL, "formats": {
            "http-stream": {"action": "close"}, "ws-message": {"content": "end"}}}])
        self.assertEqual(await collect.done, b"start\none\ntwo\n")
        messages = await side.wait_messages(4)
        self.assertEqual([payload for payload, _binary in messages],
                         [b"subscribed", b"one", b"two", b"end"])
