"""Issue 19: a closed connection, of any kind, leaves nothing for the cyclic garbage collector.

The proxy runs in this process as twistd builds it (the service tree of tap.py); the origin
runs in a subprocess (tests/support/churn_origin.py) and the clients are plain sockets in a thread
(tests/churn_client.py), so neither adds objects here. With the collector off, N connections
are opened and closed; ``gc.collect()`` then finds what only it could free. The test's own
machinery (trial, Deferreds waited on, the thread pool) leaves a few cycles of its own, so
what is counted is every unreachable object in a cycle that involves the server: an object
of fanout_tx, twisted.web, Twisted's TCP and endpoint code or autobahn (see
``server_garbage``).
"""

from __future__ import annotations

import gc
import subprocess
import sys
import types
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fanout_tx.core.formats import Format
from fanout_tx.core.items import Item, parse_item
from fanout_tx.core.router import Router
from fanout_tx.tap import build_service, listening_port, load_settings
from tests.support import churn_client as client
from tests.support.helpers import RecordingSubscriber, wait_until

N = 200  # connections per test: fewer than N / 100 garbage objects means none per connection
# Not txaio: its _BatchedTimer (autobahn's close-handshake timers) leaves one 5-object cycle
# (``notify_one_chunk``'s closure holding itself) per timer bucket that fires, at most one a
# second per factory, however many connections there are; it lives entirely in txaio.
SERVER_MODULES = ("fanout_tx.", "twisted.web.", "twisted.internet.tcp",
                  "twisted.internet.endpoints", "autobahn.")
STREAM = b"GET /stream/s HTTP/1.1\r\nHost: churn\r\n\r\n"
POLL = b"GET /poll/p HTTP/1.1\r\nHost: churn\r\n\r\n"


def _module_of(obj: Any) -> str:
    if isinstance(obj, types.MethodType):
        obj = obj.__self__
    if isinstance(obj, (type, types.FunctionType)):
        return getattr(obj, "__module__", "") or ""
    return type(obj).__module__


def server_garbage(garbage: list[Any], before: set[int]) -> list[Any]:
    """The objects of ``garbage`` (unreachable, found by the collector) that share a cycle,
    or hang off one, with an object of the server's modules; objects that existed
    ``before`` (ids) are not counted (an earlier test's service tree, freed meanwhile)."""
    garbage = [obj for obj in garbage if id(obj) not in before]
    index = {id(obj): i for i, obj in enumerate(garbage)}
    parent = list(range(len(garbage)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, obj in enumerate(garbage):
        for referent in gc.get_referents(obj):
            j = index.get(id(referent))
            if j is not None:
                parent[root(i)] = root(j)
    marked = {root(i) for i, obj in enumerate(garbage)
              if _module_of(obj).startswith(SERVER_MODULES)}
    return [obj for i, obj in enumerate(garbage) if root(i) in marked]


def _describe(obj: Any) -> str:
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, types.MethodType):
        return f"method of {type(obj.__self__).__qualname__}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class ChurnGarbageTests(TestCase):
    timeout = 60
    origin: ClassVar[subprocess.Popen[bytes]]
    http_port: ClassVar[int]
    ws_port: ClassVar[int]

    @classmethod
    def setUpClass(cls) -> None:
        cls.origin = subprocess.Popen([sys.executable, "-m", "tests.support.churn_origin"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert cls.origin.stdout is not None
        cls.http_port, cls.ws_port = map(int, cls.origin.stdout.readline().split())

    @classmethod
    def tearDownClass(cls) -> None:
        assert cls.origin.stdin is not None
        cls.origin.stdin.close()  # the origin stops with its stdin
        try:
            cls.origin.wait(10)
        except subprocess.TimeoutExpired:
            cls.origin.kill()
            cls.origin.wait()

    async def start_proxy(self, runner: str = "") -> None:
        """The service tree's client port, routed to the origin subprocess: HTTP for Host
        ``churn``, WebSocket-over-HTTP under /events, WebSocket proxying elsewhere."""
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        (folder / "routes").write_text(
            f"churn 127.0.0.1:{self.http_port}\n"
            f"churn,proto=ws,path_beg=/events 127.0.0.1:{self.http_port},over_http\n"
            f"churn,proto=ws 127.0.0.1:{self.ws_port}\n")
        config = folder / "fanout.conf"
        config.write_text(
            f"[runner]\nhttp_port = 127.0.0.1:0\n{runner}"
            "[handler]\npush_in_http_addr = 127.0.0.1\npush_in_http_port = 0\n"
            "push_in_spec = tcp://127.0.0.1:*\npush_in_sub_specs = tcp://127.0.0.1:*\n")
        root, core = build_service(load_settings(str(config)), reactor)
        self.addCleanup(core.clients.close_idle)  # after every user stopped
        self.router = core.router
        proxy = root.getServiceNamed("http-proxy")
        websocket = root.getServiceNamed("websocket")
        self.sessions = websocket.handler.sessions
        self.addCleanup(websocket.stopService)  # its idle origin connections
        [listener] = list(proxy)
        self.limit = listener.factory.connection_limit
        proxy.startService()
        self.addCleanup(proxy.stopService)
        self.port = (await listening_port(listener)).getHost().port

    async def settled(self, held: int = 0) -> None:
        """Every connection but ``held`` streams has ended on the server's side too."""
        await wait_until(lambda: (self.limit.open == held and not self.sessions
                                  and self.router.subscriber_count() == held), timeout=20)
        for _ in range(3):  # what ends on the next reactor turn (write batches, closes)
            await wait_until(lambda: True, interval=0.02)

    async def assert_no_garbage(self, churn: Any, held: int = 0) -> None:
        """Run ``churn`` once to warm up (pools, caches), then again with the collector
        off, and check what the collector finds afterwards."""
        await churn(5)
        await self.settled(held)
        gc.collect()
        existing = gc.get_objects()  # held, so that no new object can take one's id
        before = {id(obj) for obj in existing}
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await churn(N)
            await self.settled(held)
            gc.collect()
            found = server_garbage(gc.garbage, before)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            del existing
        kinds = Counter(_describe(obj) for obj in found).most_common(12)
        self.assertLess(len(found), N / 100,
                        f"{len(found)} objects in cycles after {N} connections: {kinds}")

    def publish(self, channel: str, fmt: str, **fields: Any) -> None:
        self.router.publish(parse_item({"channel": channel, "formats": {fmt: fields}}))

    # -- HTTP holds ------------------------------------------------------------------------

    async def test_stream_closed_by_the_client(self) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks = await deferToThread(client.connect, self.port, n, STREAM)
            seen = await deferToThread(client.read_all, socks, b"ok\n")
            self.assertTrue(all(s.endswith(b"ok\n\r\n") for s in seen), seen[:1])
            await deferToThread(client.close_all, socks)

        await self.assert_no_garbage(churn)

    async def test_stream_client_vanishes(self) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks = await deferToThread(client.connect, self.port, n, STREAM)
            await deferToThread(client.read_all, socks, b"ok\n")
            await deferToThread(client.close_all, socks, True)

        await self.assert_no_garbage(churn)

    async def test_stream_closed_by_a_publish(self) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks = await deferToThread(client.connect, self.port, n, STREAM)
            await deferToThread(client.read_all, socks, b"ok\n")
            self.publish("s", "http-stream", action="close")
            ends = await deferToThread(client.read_all, socks, b"0\r\n\r\n")
            self.assertTrue(all(e.endswith(b"0\r\n\r\n") for e in ends), ends[:1])
            await deferToThread(client.close_all, socks)

        await self.assert_no_garbage(churn)

    async def test_long_poll_answered(self) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks = await deferToThread(client.connect, self.port, n, POLL)
            await wait_until(lambda: self.router.subscriber_count() == n)
            self.publish("p", "http-response", body="published")
            answers = await deferToThread(client.read_all, socks, b"published")
            self.assertTrue(all(a.endswith(b"published") for a in answers), answers[:1])
            await deferToThread(client.close_all, socks)

        await self.assert_no_garbage(churn)

    async def test_long_poll_timed_out(self) -> None:
        """Grip-Timeout is at least 5 s: both rounds wait that long once."""
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks = await deferToThread(client.connect, self.port, n, POLL)
            answers = await deferToThread(client.read_all, socks, b"timeout\n")
            self.assertTrue(all(a.endswith(b"timeout\n") for a in answers), answers[:1])
            await deferToThread(client.close_all, socks)

        await self.assert_no_garbage(churn)

    async def test_long_poll_client_vanishes(self) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks = await deferToThread(client.connect, self.port, n, POLL)
            await wait_until(lambda: self.router.subscriber_count() == n)
            await deferToThread(client.close_all, socks, True)

        await self.assert_no_garbage(churn)

    # -- requests answered at once ---------------------------------------------------------

    async def test_pass_through(self) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            answers = await deferToThread(
                client.requests, self.port, n,
                b"GET /plain HTTP/1.1\r\nHost: churn\r\nConnection: close\r\n\r\n")
            self.assertTrue(all(a.endswith(b"\r\n\r\nhello\n") for a in answers), answers[:1])

        await self.assert_no_garbage(churn)

    async def test_refused_requests(self) -> None:
        """No route (502), a target that is not a path (400), a request Twisted cannot
        parse (400)."""
        await self.start_proxy()
        refused = [
            (b"GET / HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n", b" 502 "),
            (b"GET http://churn/ HTTP/1.1\r\nHost: churn\r\nConnection: close\r\n\r\n",
             b" 400 "),
            (b"NONSENSE\r\n\r\n", b" 400 "),
        ]

        async def churn(n: int) -> None:
            for request, status in refused:
                answers = await deferToThread(client.requests, self.port, n // 3, request)
                self.assertTrue(all(status in a[:16] for a in answers), answers[:1])

        await self.assert_no_garbage(churn)

    async def test_over_the_per_address_cap(self) -> None:
        """``client_maxconn_per_ip``: past it every new connection gets a 503."""
        await self.start_proxy("client_maxconn_per_ip = 1\n")
        [holder] = await deferToThread(client.connect, self.port, 1, STREAM)
        await deferToThread(client.read, holder, b"ok\n")

        async def churn(n: int) -> None:
            answers = await deferToThread(client.requests, self.port, n, STREAM)
            self.assertTrue(all(b" 503 " in a[:16] for a in answers), answers[:1])

        try:
            await self.assert_no_garbage(churn, held=1)
        finally:
            await deferToThread(client.close_all, [holder])
            await wait_until(lambda: self.limit.open == 0)

    # -- WebSocket -------------------------------------------------------------------------

    async def _websockets(self, path: str, close: str) -> None:
        await self.start_proxy()

        async def churn(n: int) -> None:
            socks, seen = await deferToThread(client.ws_open, self.port, n, path, b"hi", b"hi")
            self.assertTrue(all(s.startswith(b"HTTP/1.1 101 ") for s in seen), seen[:1])
            if close == "client":
                await deferToThread(client.ws_close_all, socks)
            elif close == "vanish":
                await deferToThread(client.close_all, socks, True)
            else:  # a published close
                await wait_until(lambda: self.router.subscriber_count() == n)
                self.publish("wschurn", "ws-message", action="close")
                await deferToThread(client.read_all, socks)
                await deferToThread(client.close_all, socks)

        await self.assert_no_garbage(churn)

    async def test_websocket_over_http_closed_by_the_client(self) -> None:
        await self._websockets("/events", "client")

    async def test_websocket_over_http_client_vanishes(self) -> None:
        await self._websockets("/events", "vanish")

    async def test_websocket_over_http_closed_by_a_publish(self) -> None:
        await self._websockets("/events", "publish")

    async def test_websocket_proxied_closed_by_the_client(self) -> None:
        await self._websockets("/ws", "client")

    async def test_websocket_proxied_client_vanishes(self) -> None:
        await self._websockets("/ws", "vanish")

    async def test_websocket_proxied_closed_by_a_publish(self) -> None:
        await self._websockets("/ws", "publish")


def _item(channel: str, content: bytes, item_id: str, prev_id: str | None = None) -> Item:
    return Item(channel, {"http-stream": Format("http-stream", content=content)}, id=item_id,
                prev_id=prev_id)


class PublishChurnTests(SynchronousTestCase):
    """1,000 channels subscribed, published to and dropped, round after round: what the router
    keeps per channel stays bounded, and nothing keeps a departed subscriber."""

    def test_router_state_bounded_under_channel_churn(self) -> None:
        clock = Clock()
        router = Router(clock, message_wait=5.0, id_cache_ttl=60.0, id_cache_max=3_000,
                        max_last_ids=1_500)
        departed: list[weakref.ref[RecordingSubscriber]] = []
        for round_number in range(10):
            subscribers = [RecordingSubscriber() for _ in range(1_000)]
            channels = [f"c{round_number}-{i}" for i in range(1_000)]
            for channel, subscriber in zip(channels, subscribers, strict=True):
                router.subscribe(channel, subscriber)
            for channel in channels:
                router.publish(_item(channel, b"a", "1"))
                # out of order: held for its predecessor "2" until the channel empties
                router.publish(_item(channel, b"c", "3", prev_id="2"))
                router.publish(_item(channel, b"a", "1"))  # a duplicate
            self.assertEqual(subscribers[0].contents, [b"a"])
            for channel, subscriber in zip(channels, subscribers, strict=True):
                router.unsubscribe(channel, subscriber)
            departed.extend(weakref.ref(s) for s in subscribers)
            del subscribers, subscriber  # the loop variable holds the last one
            clock.advance(20)
            self.assertEqual((router.channels(), router.subscriber_count()), (frozenset(), 0))
            self.assertEqual(router._pending, {})
            self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])
            self.assertLessEqual(len(router._last_ids), 1_500)
            self.assertLessEqual(len(router._seen_ids), 3_000)
        self.assertEqual([ref for ref in departed if ref() is not None], [])
        clock.advance(61)
        router.publish(_item("later", b"x", "x"))
        self.assertEqual(len(router._seen_ids), 1)  # expired ids leave at the next publish
