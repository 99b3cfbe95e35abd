"""Clients that hold connections without finishing requests (issue 13 item 7: slowloris):
request-head deadline, body minimum rate, kept-alive idle timeout, and the per-address
connection cap. Real sockets to a real proxy; timeouts in tenths of a second."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Protocol, ServerFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from typing_extensions import override

from fanout_tx.inputs.publish_api import PublishSite
from fanout_tx.ops.deadlines import ClientTimeouts
from fanout_tx.transports.http.conn_limit import ConnectionLimit
from fanout_tx.transports.write_budget import WriteBudget
from tests.support.helpers import RawClient, TrackingFactory, self_signed_for_loopback, wait_until
from tests.support.proxy_fixtures import ProxyHarness, grip
from tests.support.ws import WsTestMixin, grip_echo

FAST = ClientTimeouts(header=0.5, keepalive=0.5, body_min_rate=1000, body_window=0.5)
GET = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


def harness(test: TestCase, timeouts: ClientTimeouts = FAST, maxconn: int = 0,
            per_ip: int = 0) -> ProxyHarness:
    """A proxy whose site has ``timeouts`` and a connection limit on its port."""
    proxy = ProxyHarness(test)
    proxy.handle(b"/hello", lambda r: b"hello")
    site = proxy.proxy_factory.wrappedFactory
    limit = ConnectionLimit(maxconn, per_ip)
    limit.add_port(proxy.proxy_port)
    site.connection_limit, site.dropped, site.client_timeouts = limit, limit.dropped, timeouts
    return proxy


async def connect(proxy: ProxyHarness) -> RawClient:
    return await ClientCreator(reactor, RawClient).connectTCP(
        "127.0.0.1", proxy.proxy_port.getHost().port)


async def within(seconds: float, deferred: Deferred) -> object:
    """``deferred``'s result, or a failed test after ``seconds``."""
    deferred.addTimeout(seconds, reactor)
    return await deferred


def trickle(test: TestCase, client: RawClient, data: bytes, interval: float) -> None:
    """Send ``data`` one byte every ``interval`` seconds (each byte would restart an idle
    timer) until it is all sent or the connection ends."""
    remaining = iter(data)

    def one() -> None:
        byte = next(remaining, None)
        if byte is None or client.closed.called:
            loop.stop()
            return
        client.transport.write(bytes([byte]))

    loop = task.LoopingCall(one)
    loop.start(interval)
    test.addCleanup(lambda: loop.running and loop.stop())
    test.addCleanup(client.transport.abortConnection)


class HeadDeadlineTests(TestCase):
    async def test_slowloris_cannot_hold_client_maxconn(self) -> None:
        """Three connections trickling a head one byte per 0.1 s fill client_maxconn = 3;
        each gets a 408 when its head is late, and a fourth client is then served."""
        proxy = harness(self, maxconn=3)
        slow = [await connect(proxy) for _ in range(3)]
        for client in slow:
            trickle(self, client, GET, 0.1)
        await wait_until(lambda: proxy.proxy_port.connected and
                         proxy.proxy_factory.wrappedFactory.connection_limit.paused)
        response, body = await within(5, Deferred.fromCoroutine(proxy.fetch(b"/hello")))
        self.assertEqual((response.code, body), (200, b"hello"))
        for client in slow:
            answer = await within(5, client.closed)
            self.assertTrue(answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer)
            self.assertTrue(answer.endswith(b"Request head not received in time.\n"))
        self.assertEqual(proxy.proxy_factory.wrappedFactory.dropped["header_timeout"], 3)

    async def test_silent_connection_closed_without_answer(self) -> None:
        """Nothing of a request within the deadline: closed, no answer."""
        proxy = harness(self)
        client = await connect(proxy)
        started = reactor.seconds()
        self.assertEqual(await within(5, client.closed), b"")
        self.assertGreaterEqual(reactor.seconds() - started, 0.4)

    async def test_held_stream_is_exempt(self) -> None:
        """Once its request is complete a held stream outlives every deadline."""
        proxy = harness(self)
        proxy.handle(b"/s", lambda r: grip(r, b"open\n", Grip_Hold="stream", Grip_Channel="c"))
        client = await connect(proxy)
        client.transport.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: proxy.router.has_subscribers("c"))
        await task.deferLater(reactor, 1.2, lambda: None)  # past header, keepalive, window
        proxy.publish("c", http_stream={"content": "later\n"})
        await wait_until(lambda: b"later\n" in client.data)
        self.assertFalse(client.closed.called)
        client.transport.loseConnection()
        await client.closed


class KeepAliveTests(TestCase):
    async def test_idle_kept_alive_connection_closed(self) -> None:
        """After an answer, a kept-alive connection waits keepalive seconds for the next
        request, then is closed (no answer: nothing was asked)."""
        proxy = harness(self)
        client = await connect(proxy)
        client.transport.write(GET)
        await wait_until(lambda: client.data.endswith(b"hello"))
        answered = len(client.data)
        self.assertEqual(len(await within(5, client.closed)), answered)

    async def test_keepalive_timeout_not_twisted_idle_timer(self) -> None:
        """The configured keep-alive timeout governs, not the Site's own idle timer."""
        proxy = harness(self, ClientTimeouts(header=5, keepalive=1.5))
        proxy.proxy_factory.wrappedFactory.timeOut = 0.3
        client = await connect(proxy)
        client.transport.write(GET)
        await wait_until(lambda: client.data.endswith(b"hello"))
        await task.deferLater(reactor, 0.8, lambda: None)
        self.assertFalse(client.closed.called)
        await within(5, client.closed)

    async def test_next_request_is_served(self) -> None:
        """A second request within the idle timeout is served on the same connection."""
        proxy = harness(self)
        client = await connect(proxy)
        client.transport.write(GET)
        await wait_until(lambda: client.data.count(b"hello") == 1)
        await task.deferLater(reactor, 0.3, lambda: None)
        client.transport.write(GET)
        await wait_until(lambda: client.data.count(b"hello") == 2)
        client.transport.loseConnection()
        await client.closed

    async def test_next_head_trickled_gets_408(self) -> None:
        """The next request's head trickled byte by byte: 408 once its deadline passes."""
        proxy = harness(self)
        client = await connect(proxy)
        client.transport.write(GET)
        await wait_until(lambda: client.data.endswith(b"hello"))
        trickle(self, client, GET, 0.1)
        answer = await within(5, client.closed)
        self.assertIn(b"HTTP/1.1 408 Request Timeout\r\n", answer)


class BodyRateTests(TestCase):
    async def test_trickled_body_gets_408(self) -> None:
        """A body at 20 bytes/s against a minimum of 1000: 408 after the grace window."""
        proxy = harness(self)
        client = await connect(proxy)
        client.transport.write(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        trickle(self, client, b"x" * 5000, 0.05)
        answer = await within(5, client.closed)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer)
        self.assertTrue(answer.endswith(b"Request body too slow.\n"))
        self.assertEqual(proxy.proxy_factory.wrappedFactory.dropped["body_rate"], 1)

    async def test_body_at_rate_is_served(self) -> None:
        """A body sent over several windows at more than the minimum rate is proxied."""
        proxy = harness(self)
        client = await connect(proxy)
        client.transport.write(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n")
        for _ in range(3):
            client.transport.write(b"x" * 1000)
            await task.deferLater(reactor, 0.4, lambda: None)
        await wait_until(lambda: client.data.endswith(b"hello"))
        self.assertEqual(proxy.origin.bodies, [b"x" * 3000])
        client.transport.loseConnection()
        await client.closed


class Deaf(Protocol):
    """An origin that never reads what it is sent."""

    @override
    def connectionMade(self) -> None:
        self.transport.pauseProducing()


class PausedUploadTests(TestCase):
    async def test_upload_paused_by_a_slow_origin_is_not_too_slow(self) -> None:
        """While the proxy itself stops reading a large body (the origin does not take it),
        the client is not held to the minimum rate."""
        factory = TrackingFactory(ServerFactory.forProtocol(Deaf))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(factory.wait_closed)
        self.addCleanup(port.stopListening)
        proxy = harness(self)
        proxy.set_routes(f"* 127.0.0.1:{port.getHost().port}")
        self.addCleanup(lambda: [p.transport.abortConnection() for p in list(factory.protocols)])
        client = await connect(proxy)
        size = 32 * 1024 * 1024
        client.transport.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                               % size + b"x" * size)
        channel = next(iter(proxy.proxy_factory.protocols)).wrappedProtocol
        await wait_until(lambda: channel.requests and channel.requests[-1].upload is not None
                         and channel.requests[-1].upload.client_paused)
        await task.deferLater(reactor, 1.5, lambda: None)  # three windows
        self.assertFalse(client.closed.called, client.data)
        self.assertEqual(proxy.proxy_factory.wrappedFactory.dropped["body_rate"], 0)
        client.transport.abortConnection()
        await client.closed


class PerAddressCapTests(TestCase):
    async def test_over_cap_refused_with_503(self) -> None:
        """Two connections from 127.0.0.1 at most: the third gets a 503 and is closed; once
        one ends, a new one is taken."""
        proxy = harness(self, ClientTimeouts(header=30), per_ip=2)
        first, second = await connect(proxy), await connect(proxy)
        third = await connect(proxy)
        answer = await within(5, third.closed)
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer)
        self.assertTrue(answer.endswith(b"Too many connections from your address.\n"))
        self.assertEqual(proxy.proxy_factory.wrappedFactory.dropped["maxconn_per_ip"], 1)
        first.transport.loseConnection()
        await first.closed
        await wait_until(lambda: proxy.proxy_factory.wrappedFactory.connection_limit.open == 1)
        fourth = await connect(proxy)
        fourth.transport.write(GET)
        await wait_until(lambda: fourth.data.endswith(b"hello"))
        for client in (second, fourth):
            client.transport.loseConnection()
            await client.closed


class OtherListenerTests(TestCase):
    async def test_publish_port_has_the_head_deadline(self) -> None:
        """The publish port (and the metrics listener, the same Site) times out a
        trickled head too."""
        site = PublishSite(Resource(), 1000, reactor)
        site.client_timeouts = FAST
        factory = TrackingFactory(site)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(factory.wait_closed)
        self.addCleanup(port.stopListening)
        client = await ClientCreator(reactor, RawClient).connectTCP(
            "127.0.0.1", port.getHost().port)
        trickle(self, client, b"POST /publish/ HTTP/1.1\r\nHost: x\r\n\r\n", 0.1)
        answer = await within(5, client.closed)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer)


class StreamBudgetTests(TestCase):
    """``[runner] max_buffered_bytes`` over real sockets: stream clients that stop reading."""

    async def open_stream(self, proxy: ProxyHarness) -> RawClient:
        client = await connect(proxy)
        self.addCleanup(client.transport.abortConnection)
        before = proxy.router.subscriber_count()
        client.transport.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: proxy.router.subscriber_count() == before + 1)
        return client

    async def publish_until(self, proxy: ProxyHarness, condition: object) -> None:
        """Publish 128 kB items, a reactor turn apart, until ``condition()`` (at most 400)."""
        for _ in range(400):
            if condition():  # type: ignore[operator]
                return
            proxy.publish("c", http_stream={"content": "x" * 131_072})
            await task.deferLater(reactor, 0.005, lambda: None)
        raise AssertionError("condition not met")

    async def test_client_behind_first_is_dropped_first(self) -> None:
        """A stops reading first, B later; past the cap A is dropped, B (behind for less)
        and a client that reads keep their streams."""
        proxy = ProxyHarness(self, max_client_buffer=64_000_000)
        budget = WriteBudget(reactor, 2_000_000)
        proxy.resource.write_budget = budget
        proxy.handle(b"/s", lambda r: grip(r, b"", Grip_Hold="stream", Grip_Channel="c"))
        first, second, reader = [await self.open_stream(proxy) for _ in range(3)]
        first.transport.pauseProducing()
        await self.publish_until(proxy, lambda: budget.total > 1_000_000)
        second.transport.pauseProducing()
        await self.publish_until(proxy, lambda: budget.dropped)
        self.assertEqual(budget.dropped, 1)
        self.assertLessEqual(budget.total, 2_000_000)
        self.assertEqual(proxy.router.subscriber_count(), 2)  # second and reader
        first.transport.resumeProducing()  # a client that does not read sees no close
        await within(5, first.closed)
        self.assertFalse(second.closed.called)
        second.transport.resumeProducing()
        await wait_until(lambda: budget.total == 0)
        proxy.publish("c", http_stream={"content": "last\n"})
        for client in (second, reader):
            await wait_until(lambda c=client: c.data.endswith(b"last\n\r\n"))  # type: ignore[misc]


class WebSocketBudgetTests(WsTestMixin, TestCase):
    timeout = 60

    @inlineCallbacks
    def test_websocket_that_does_not_read_is_dropped(self):  # type: ignore[no-untyped-def]
        """A WebSocket client that stops reading counts against the same budget and is
        dropped past it; one that reads keeps its connection."""
        yield self.start(grip_echo)
        budget = WriteBudget(reactor, 1_000_000)
        self.factory.budget = budget
        self.factory.max_outbound = 64_000_000
        slow_side, slow = yield self.connect()
        fast_side, fast = yield self.connect()
        for client, side in ((slow, slow_side), (fast, fast_side)):
            client.sendMessage(b"sub:news")
            yield side.wait_messages(1)
        slow.transport.pauseProducing()
        for _ in range(400):
            if budget.dropped:
                break
            self.publish("news", content="x" * 131_072)
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(budget.dropped, 1)
        slow.transport.resumeProducing()  # a client that does not read sees no close
        yield within(5, slow_side.closed)
        self.publish("news", content="still here")
        yield wait_until(lambda: any(m == (b"still here", False) for m in fast_side.messages))


class Named:
    def __init__(self, name: str, dropped: list[str]) -> None:
        self.name, self.dropped = name, dropped

    def drop_slow(self) -> None:
        self.dropped.append(self.name)


class WriteBudgetOrderTests(SynchronousTestCase):
    def test_drops_in_the_order_clients_fell_behind(self) -> None:
        """Bytes added later to a client do not move it back in the line; a released
        client leaves it; enforcement runs once, on the next turn."""
        clock = task.Clock()
        budget = WriteBudget(clock, 100)
        dropped: list[str] = []
        a, b, c = (Named(n, dropped) for n in "abc")
        budget.add(a, 40)
        budget.add(b, 40)
        budget.add(c, 10)
        budget.release(c)
        budget.add(c, 10)
        budget.add(b, 30)  # b is now the largest, but fell behind after a
        self.assertEqual(dropped, [])
        clock.advance(0)
        self.assertEqual((dropped, budget.total, budget.dropped), (["a"], 80, 1))


class TlsHandshakeTests(TestCase):
    async def test_stalled_tls_handshake_closed(self) -> None:
        """A TLS client port: a connection that never sends its ClientHello is closed when
        the head deadline passes (it counts from the connect, handshake included)."""
        proxy = harness(self)
        cert, _public = self_signed_for_loopback()
        factory = TrackingFactory(proxy.proxy_factory.wrappedFactory)
        port = reactor.listenSSL(0, factory, cert.options(), interface="127.0.0.1")
        self.addCleanup(factory.wait_closed)
        self.addCleanup(port.stopListening)
        client = await ClientCreator(reactor, RawClient).connectTCP(
            "127.0.0.1", port.getHost().port)
        self.assertEqual(await within(5, client.closed), b"")
        self.assertEqual(proxy.proxy_factory.wrappedFactory.dropped["header_timeout"], 1)
