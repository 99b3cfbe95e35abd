"""Clients that hold connections without finishing requests (issue 13 item 7: slowloris):
request-head deadline, body minimum rate, kept-alive idle timeout, and the per-address
connection cap. Real sockets to a real proxy; timeouts in tenths of a second."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Protocol, ServerFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from typing_extensions import override

from fanout_tx.http.conn_limit import ConnectionLimit
from fanout_tx.http.deadlines import ClientTimeouts
from fanout_tx.http.publish_api import PublishSite
from tests.helpers import RawClient, TrackingFactory, wait_until
from tests.proxy_fixtures import ProxyHarness, grip

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
        site = PublishSite(Resource(), 1000)
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
