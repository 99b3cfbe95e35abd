"""``[runner] client_maxconn`` (transports/http/conn_limit.py): past the limit the client ports stop
accepting until a connection ends; HTTP and WebSocket connections count alike."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import ClientCreator
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from fanout_tx.config.routes import parse_routes
from fanout_tx.tap import build_service, listening_port, load_settings
from fanout_tx.transports.http.conn_limit import ConnectionLimit
from fanout_tx.transports.http.proxy import ProxyFactory, ProxyResource
from tests.support.helpers import RawClient, TrackingFactory, wait_until
from tests.support.proxy_fixtures import origin_on_loopback, tree_config
from tests.support.ws import WsTestMixin, grip_echo, listen_endpoint


class FakePort:
    def __init__(self) -> None:
        self.reading = True
        self.connected = True

    def stopReading(self) -> None:  # noqa: N802
        self.reading = False

    def startReading(self) -> None:  # noqa: N802
        self.reading = True


class LimitTests(SynchronousTestCase):
    def test_pause_at_the_limit_and_resume_below(self) -> None:
        limit = ConnectionLimit(2)
        port = FakePort()
        limit.add_port(port)
        first = limit.take()
        self.assertTrue(port.reading)
        second = limit.take()
        self.assertEqual((limit.open, limit.paused, port.reading), (2, True, False))
        late = FakePort()
        limit.add_port(late)  # a port bound while paused starts paused
        self.assertFalse(late.reading)
        first.release()
        first.release()  # a slot is released once, whoever sees the end first
        self.assertEqual((limit.open, limit.paused, port.reading, late.reading),
                         (1, False, True, True))
        second.release()
        self.assertEqual(limit.open, 0)


class ServiceTreeLimitTests(TestCase):
    async def test_third_client_waits_for_a_free_place(self) -> None:
        _origin, origin_port = origin_on_loopback(self, {b"/hi": lambda request: b"hello"})
        config = tree_config(Path(self.mktemp()), origin_port, "client_maxconn = 2\n")
        root, core = build_service(load_settings(str(config)), reactor)
        self.addCleanup(core.clients.close_idle)  # after every user stopped
        proxy = root.getServiceNamed("http-proxy")
        [listener] = list(proxy)
        limit = listener.factory.connection_limit
        listener.factory = factory = TrackingFactory(listener.factory)
        proxy.startService()
        self.addCleanup(factory.wait_closed)
        self.addCleanup(proxy.stopService)
        port = await listening_port(listener)
        clients = []
        for _ in range(3):
            client = await ClientCreator(reactor, RawClient).connectTCP(
                "127.0.0.1", port.getHost().port)
            self.addCleanup(client.transport.loseConnection)
            clients.append(client)
        await wait_until(lambda: limit.paused)
        self.assertNotIn(port, reactor.getReaders())  # not accepting: the third waits
        self.assertEqual(limit.open, 2)
        clients[2].transport.write(b"GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        clients[0].transport.loseConnection()
        await clients[0].closed
        third = await clients[2].closed  # accepted once the first left, then served
        self.assertTrue(third.startswith(b"HTTP/1.1 200 "), third[:40])
        self.assertTrue(third.endswith(b"hello"))
        clients[1].transport.loseConnection()
        await wait_until(lambda: limit.open == 0)
        self.assertIn(port, reactor.getReaders())


class WebSocketLimitTests(WsTestMixin, TestCase):
    """A WebSocket upgrade takes the socket from the HTTP channel; its place under the limit
    goes with it and is given back when the WebSocket ends."""

    @inlineCallbacks
    def start_handler(self, line: str):
        yield super().start_handler(line)
        self.limit = ConnectionLimit(10)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        resource = ProxyResource(SimpleNamespace(table=parse_routes(line)), self.router,
                                 reactor, Agent(reactor, pool=pool),
                                 websocket_handler=self.handler)
        port = yield listen_endpoint().listen(ProxyFactory(resource, reactor,
                                                          connection_limit=self.limit))
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    @inlineCallbacks
    def test_websocket_counts_until_it_ends(self) -> Any:
        yield self.start(grip_echo)
        side, _client = yield self.connect()
        self.assertEqual(self.limit.open, 1)
        side.client.sendClose(1000)
        yield side.closed
        yield wait_until(lambda: self.limit.open == 0)
