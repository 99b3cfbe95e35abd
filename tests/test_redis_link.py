"""RedisLink's connection life on a fake endpoint and task.Clock: backoff, set-up, health
pings, reply timeouts; and parse_redis_url."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fanout_tx.cluster.redis_link import Backoff, RedisDownError, RedisLink
from fanout_tx.config.redis_url import RedisAddress, parse_redis_url
from fanout_tx.config.settings import ConfigError, parse_config

LOCAL = RedisAddress(host="127.0.0.1")


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Records connection attempts; the test decides how each one ends."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, Deferred[Any]]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((factory, attempt))
        return attempt

    def refuse(self) -> None:
        self.attempts[-1][1].errback(Failure(ConnectionRefusedError()))

    def accept(self) -> tuple[Any, StringTransport]:
        factory, attempt = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        attempt.callback(protocol)
        return protocol, transport


class RedisLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.events: list[str] = []

    def link(self, address: RedisAddress | None = None, **kwargs: Any) -> RedisLink:
        link = RedisLink("test", self.endpoint, self.clock, address or LOCAL,
                         on_up=lambda: self.events.append("up"),
                         on_down=lambda: self.events.append("down"), **kwargs)
        link.startService()
        return link

    def test_backoff_doubles_up_to_its_cap(self) -> None:
        backoff = Backoff(initial=0.1, maximum=1.0)
        self.assertEqual([backoff.next_delay() for _ in range(6)],
                         [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        backoff.reset()
        self.assertEqual(backoff.next_delay(), 0.1)

    def test_refused_connections_are_retried_with_backoff(self) -> None:
        """Each refused attempt schedules the next one a little later, up to 2 s apart."""
        self.link()
        delays = []
        for _ in range(7):
            self.endpoint.refuse()
            (call,) = self.clock.getDelayedCalls()
            delays.append(round(call.getTime() - self.clock.seconds(), 3))
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
        self.assertEqual(len(self.endpoint.attempts), 8)

    def test_unanswered_ping_drops_the_connection(self) -> None:
        """A server that stops answering is noticed by the health ping: the connection is
        aborted, the link reports down once and reconnects."""
        link = self.link()
        protocol, transport = self.endpoint.accept()
        self.assertEqual((link.up, self.events), (True, ["up"]))
        self.clock.advance(1.0)
        self.assertIn(b"PING", transport.value())
        protocol.dataReceived(b"+PONG\r\n")
        self.clock.pump([1.0, 1.0, 1.0])  # the next ping goes out at 2 s, unanswered
        self.assertTrue(transport.disconnected)  # aborted
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((link.up, self.events), (False, ["up", "down"]))
        self.failureResultOf(link.command("PING"), RedisDownError)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_busy_server_is_waited_for(self) -> None:
        """Commands queued behind a long pipeline are not a hang while answers keep coming;
        the connection is dropped only after the timeout passes with no answer at all."""
        link = self.link(ping_interval=None)
        protocol, transport = self.endpoint.accept()
        first, second = link.command("GET", "a"), link.command("GET", "b")
        self.clock.advance(1.5)
        protocol.dataReceived(b"$1\r\nA\r\n")
        self.assertEqual(self.successResultOf(first), b"A")
        self.clock.advance(1.0)  # second's 2 s are up, but the last answer is 1 s old
        self.assertFalse(transport.disconnected)
        self.assertNoResult(second)
        self.clock.advance(1.0)
        self.assertTrue(transport.disconnected)

    def test_auth_select_and_prepare_before_up(self) -> None:
        """Credentials and the database are sent first, then the owner's set-up; only then
        is the link up."""
        prepared: list[Any] = []
        link = self.link(RedisAddress(host="h", db=3, username="u", password="p"),
                         prepare=lambda command: command("PING").addCallback(prepared.append))
        protocol, transport = self.endpoint.accept()
        self.assertEqual(transport.value().count(b"\r\n$"), 3)  # AUTH u p
        protocol.dataReceived(b"+OK\r\n")
        protocol.dataReceived(b"+OK\r\n")
        self.assertFalse(link.up)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual((link.up, prepared), (True, [b"PONG"]))
        self.assertIn(b"SELECT", transport.value())

    def test_failed_set_up_drops_the_connection(self) -> None:
        link = self.link(prepare=lambda command: fail(RuntimeError("no scripting")))
        _protocol, transport = self.endpoint.accept()
        self.assertTrue(transport.disconnected)
        self.assertFalse(link.up)
        self.assertEqual(self.events, [])

    def test_stopping_cancels_pending_retries(self) -> None:
        link = self.link()
        self.endpoint.refuse()
        link.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RedisUrlTests(SynchronousTestCase):
    def test_tcp_and_unix_urls(self) -> None:
        self.assertEqual(parse_redis_url("redis://:s%40cret@127.0.0.1:6380/2"),
                         RedisAddress(host="127.0.0.1", port=6380, db=2, password="s@cret"))
        self.assertEqual(parse_redis_url("redis://localhost"), RedisAddress(host="localhost"))
        self.assertEqual(parse_redis_url("unix:///run/redis.sock?db=4"),
                         RedisAddress(path="/run/redis.sock", db=4))

    def test_bad_urls_stop_config_loading(self) -> None:
        """A bad [redis] url is a ConfigError naming the line, before anything starts."""
        for url in ("http://x", "redis://", "redis://h/db1", "redis://h:99999", "unix://"):
            with self.assertRaises(ConfigError) as caught:
                parse_config(f"[redis]\nurl = {url}\n", "fanout.conf")
            self.assertIn("fanout.conf:2", str(caught.exception))
