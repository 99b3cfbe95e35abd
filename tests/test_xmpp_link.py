"""The component's link: handshake, refusals reported by cause, backoff, wiring."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.config.settings import Config, XmppConfig
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.tap import build_service, load_settings
from fanout_tx.transports.xmpp.component import XmppComponent, build_xmpp
from fanout_tx.transports.xmpp.link import MAX_RETRY_DELAY

SERVER_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' id='sid1' "
                 b"from='push.localhost'>")


class LinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        config = Config(xmpp=XmppConfig(enabled=True, port=5999, secret="s"))
        self.component: XmppComponent = build_xmpp(
            config, Router(self.reactor), self.reactor, origin_clients(self.reactor).verified)
        self.component.startService()
        [(host, port, self.factory, _timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 5999))
        self.connector = self.component._connection

    def connect(self) -> StringTransport:
        transport = StringTransport()
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(transport)
        self.protocol.dataReceived(SERVER_HEADER)
        return transport

    def lose(self) -> None:
        reason = Failure(ConnectionDone())
        self.protocol.connectionLost(reason)
        self.factory.clientConnectionLost(self.connector, reason)

    def errors(self) -> list[dict]:
        return [e for e in self.events if e["log_level"] == LogLevel.error]

    def test_handshake_brings_the_link_up(self) -> None:
        transport = self.connect()
        self.assertIn(b"<handshake>", transport.value())
        self.protocol.dataReceived(b"<handshake/>")
        self.assertTrue(self.component.link.up)
        self.assertEqual(self.errors(), [])
        self.lose()
        self.assertFalse(self.component.link.up)
        self.assertEqual(self.component.link.errors["connection-lost"], 1)
        self.component.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_wrong_secret_is_reported_and_backs_off(self) -> None:
        """not-authorized is logged as an error with its cause and counted; the retry delay
        grows (TCP connecting does not reset it) up to 30 s."""
        delays = []
        for _ in range(8):
            self.connect()
            self.protocol.dataReceived(
                b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad token</text>"
                b"</stream:error>")
            self.lose()
            [retry] = self.reactor.getDelayedCalls()
            wait = retry.getTime() - self.reactor.seconds()
            delays.append(round(wait, 6))
            self.assertAlmostEqual(self.errors()[-1]["delay"], wait)
            self.reactor.advance(wait)
        self.assertEqual(self.component.link.errors["not-authorized"], 8)
        self.assertEqual(self.component.link.last_error, "not-authorized: bad token")
        self.assertEqual(delays, sorted(delays))
        self.assertEqual(delays[-1], MAX_RETRY_DELAY)
        event = self.errors()[0]
        self.assertEqual((event["reason"], event["text"]), ("not-authorized", "bad token"))
        self.connect()
        self.lose()
        [retry] = self.reactor.getDelayedCalls()
        self.component.stopService()
        self.assertFalse(retry.active())

    def test_conflict_and_unreachable(self) -> None:
        self.connect()
        self.protocol.dataReceived(
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            b"</stream:error>")
        self.lose()
        self.factory.clientConnectionFailed(self.connector, Failure(ConnectionRefusedError()))
        self.assertEqual(dict(self.component.link.errors), {"conflict": 1, "unreachable": 1})
        self.assertEqual([e["reason"] for e in self.errors()], ["conflict", "unreachable"])
        self.component.stopService()

    def test_stopping_is_not_an_error(self) -> None:
        self.connect()
        self.protocol.dataReceived(b"<handshake/>")
        self.component.stopService()
        self.lose()
        self.assertEqual((self.errors(), self.reactor.getDelayedCalls()), ([], []))


class WiringTests(SynchronousTestCase):
    def test_xmpp_child_only_when_enabled(self) -> None:
        """[xmpp] enabled adds a named ``xmpp`` child that connects nothing until started."""
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "routes").write_text("* 127.0.0.1:8080\n")
        for enabled in (False, True):
            path = folder / "fanout.conf"
            path.write_text(f"[xmpp]\nenabled={str(enabled).lower()}\njid=push.example\n"
                            "[handler]\npush_in_spec=tcp://127.0.0.1:*\n"
                            "push_in_sub_specs=tcp://127.0.0.1:*\n")
            memory = MemoryReactorClock()
            root, _core = build_service(load_settings(str(path)), memory)
            names = {service.name for service in root}
            self.assertEqual("xmpp" in names, enabled)
            self.assertEqual(memory.tcpClients, [])
