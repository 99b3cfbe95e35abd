"""An XMPP server that stops reading the component link (issue #13): past ``[xmpp]
max_buffered_bytes`` waiting to be written, pushes are dropped whole (never cut), counted in
/metrics and logged at most once per interval; once the server reads again everything that
was kept arrives intact and pushes flow again, on the same link. Real sockets on 127.0.0.1:
a stand-in server that accepts the component handshake and then stops reading (a real
Prosody cannot be made to stop reading)."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.words.protocols.jabber import xmlstream
from typing_extensions import override

from fanout_tx.config.settings import Config, XmppConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.grip.instruct import Channel
from fanout_tx.ops.metrics import FanoutCollector, InputCounters, MetricSources
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.xmpp.component import XmppComponent, build_xmpp
from tests.support.helpers import wait_until

SERVER_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' id='sid1' "
                 b"from='push.localhost'>")
JID = "alice@localhost/phone"
PAD = "p" * 8000
LIMIT = 256 * 1024
_BODY = re.compile(rb"<message [^>]*><body>n(\d+)-p*</body></message>")


class StalledServer(Protocol):
    """Accepts the component handshake, then reads nothing until ``resume()``."""

    def __init__(self) -> None:
        self.received = b""
        self.greeted = False
        self.authenticated: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.authenticated.called:
            if b"<stream:stream" in self.received and not self.greeted:
                self.greeted = True
                self.transport.write(SERVER_HEADER)
            if b"</handshake>" in self.received:
                self.transport.write(b"<handshake/>")
                self.received = b""
                self.authenticated.callback(None)

    def stop_reading(self) -> None:
        self.transport.pauseProducing()

    def resume(self) -> None:
        self.transport.resumeProducing()

    def pushes(self) -> list[int]:
        return [int(n) for n in _BODY.findall(self.received)]


class StalledServerTests(TestCase):
    timeout = 60

    async def start(self) -> tuple[StalledServer, XmppComponent, Router]:
        server = StalledServer()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        router = Router(reactor)
        config = Config(xmpp=XmppConfig(enabled=True, port=port.getHost().port, secret="s",
                                        max_buffered_bytes=LIMIT))
        component = build_xmpp(config, router, reactor, origin_clients(reactor).verified)
        up: Deferred[Any] = Deferred()
        component.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, up.callback)
        component.startService()
        self.addCleanup(component.stopService)
        await up.addTimeout(10, reactor)
        await server.authenticated
        component.handler.subscriptions.apply(JID, [Channel("news")], [], {})
        return server, component, router

    def publish(self, router: Router, n: int) -> None:
        router.publish(parse_item({"channel": "news", "formats": {
            "xmpp-message": {"body": f"n{n}-{PAD}"}}}))

    async def test_stalled_server_costs_at_most_the_cap(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server, component, router = await self.start()
        unsent = component.link.unsent
        server.stop_reading()
        published = 0
        # Fill the kernel's buffers (a few MB on loopback), then the cap: bursts well under
        # the cap, and each turn the reactor writes what the socket takes.
        for _ in range(2000):
            for _ in range(10):
                self.publish(router, published)
                published += 1
            await deferLater(reactor, 0.002, lambda: None)
            if unsent["max_buffered_bytes"]:
                break
        self.assertGreater(unsent["max_buffered_bytes"], 0, "the cap was never reached")
        # While the server reads nothing, every further push is dropped: nothing grows.
        before = unsent["max_buffered_bytes"]
        for _ in range(200):
            self.publish(router, published)
            published += 1
        self.assertEqual(unsent["max_buffered_bytes"], before + 200)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn
                    and "max_buffered_bytes" in e["log_format"]]
        self.assertEqual(len(warnings), 1)  # once per interval, however many were dropped
        self.assertTrue(component.link.up)

        server.resume()
        expected = published - unsent["max_buffered_bytes"]
        await wait_until(lambda: len(server.pushes()) >= expected,
                         message="the link did not drain what it had buffered")
        received = server.pushes()
        self.assertEqual(len(received), expected)
        self.assertEqual(received, sorted(received))  # in order, none cut or repeated
        self.assertEqual(server.received.count(b"<message"), expected)

        # The link drained: pushes flow again, on the same connection.
        self.publish(router, published)
        await wait_until(lambda: server.pushes()[-1:] == [published],
                         message="a push after the drain did not arrive")
        self.assertEqual(server.pushes()[-1], published)
        self.assertTrue(component.link.up)
        self.assertEqual(sum(component.link.errors.values()), 0)

        collector = FanoutCollector(MetricSources(router, InputCounters(),
                                                  xmpp_link=component.link))
        samples = {(s.name, s.labels.get("reason")): s.value
                   for family in collector.collect() for s in family.samples}
        self.assertEqual(samples[("fanout_xmpp_unsent_total", "max_buffered_bytes")],
                         unsent["max_buffered_bytes"])
        self.assertEqual(samples[("fanout_xmpp_unsent_total", "link_down")], 0)

    async def test_pushes_while_the_link_is_down_are_counted(self) -> None:
        """The XMPP server goes away: pushes published before the link is back are dropped
        (not queued), and /metrics counts them apart from those the cap drops."""
        server, component, router = await self.start()
        server.transport.loseConnection()
        await wait_until(lambda: not component.link.up, message="the link never noticed")
        for n in range(5):
            self.publish(router, n)
        self.assertEqual(component.link.unsent, {"link_down": 5})
        registry = CollectorRegistry(auto_describe=False)  # what /metrics serves
        registry.register(FanoutCollector(MetricSources(router, InputCounters(),
                                                        xmpp_link=component.link)))
        text = generate_latest(registry).decode()
        self.assertIn('fanout_xmpp_unsent_total{reason="link_down"} 5.0', text)
        self.assertIn('fanout_xmpp_unsent_total{reason="max_buffered_bytes"} 0.0', text)
