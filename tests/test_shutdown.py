"""SIGTERM to ``twistd -n fanout``: held clients are ended cleanly and the process exits 0
within ``[runner] shutdown_timeout``. Also the log level filter and the start-up line."""

from __future__ import annotations

import sys
from pathlib import Path

import treq
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogBeginner, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.core.router import Router
from fanout_tx.ops.logs import filter_twistd_logging
from fanout_tx.ops.operations import FanoutRoot
from tests.support import proxy_fixtures
from tests.support.helpers import RecordingSubscriber
from tests.support.ops_fixtures import RawClient, hold
from tests.support.services import free_port
from tests.support.twistd import start_twistd, until_healthy, write_config
from tests.support.ws import ClientSide, WsOverHttpOrigin, grip_echo, listen_endpoint

SHUTDOWN_TIMEOUT = 5


class SigtermTests(TestCase):
    timeout = 60
    workers = 1  # [runner] workers

    async def start_server(self) -> None:
        http_origin = proxy_fixtures.HttpOrigin()
        http_origin.handlers = {b"/lp": hold, b"/stream": hold}
        self.ws_origin = WsOverHttpOrigin(grip_echo)
        origins = []
        for resource in (http_origin, self.ws_origin):
            port = await listen_endpoint().listen(Site(resource))
            self.addCleanup(port.stopListening)
            origins.append(port.getHost().port)
        self.client_port, self.publish_port = free_port(), free_port()
        folder = Path(self.mktemp())
        config = write_config(folder, (
            f"[runner]\nhttp_port=127.0.0.1:{self.client_port}\nlog_level=2\n"
            f"shutdown_timeout={SHUTDOWN_TIMEOUT}\n"
            "[proxy]\nroutesfile=routes\n"
            "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
            f"push_in_http_addr=127.0.0.1\npush_in_http_port={self.publish_port}\n"
            "[webhooks]\nenabled=false\n"
        ), routes=(f"*,path_beg=/ws 127.0.0.1:{origins[1]},over_http\n"
                   f"* 127.0.0.1:{origins[0]}\n"), workers=self.workers)
        self.process, self.output = start_twistd(self, config)
        await until_healthy(self, self.output, self.publish_port, seconds=20)

    async def connections(self) -> str:
        response = await treq.get(f"http://127.0.0.1:{self.publish_port}/metrics",
                                  persistent=False)
        return await treq.text_content(response)

    async def raw(self, path: str) -> RawClient:
        client = RawClient()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.client_port).connect(
            Factory.forProtocol(lambda: client))
        client.transport.write(f"GET {path} HTTP/1.1\r\nHost: example\r\n\r\n".encode())
        return client

    async def test_sigterm_ends_every_client_and_exits_0(self) -> None:
        await self.start_server()
        poll = await self.raw("/lp")
        stream = await self.raw("/stream")
        ws = ClientSide(f"ws://127.0.0.1:{self.client_port}/ws/chat")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.client_port).connect(ws)
        await ws.opened
        ws.client.sendMessage(b"sub:room")
        await ws.wait_messages(1)
        deadline = reactor.seconds() + 10
        while True:  # every client held in the other process
            text = await self.connections()
            if all(f'fanout_connections{{transport="{t}"}} 1.0' in text
                   for t in ("http-response", "http-stream", "ws")):
                break
            self.assertLess(reactor.seconds(), deadline, text)
            await deferLater(reactor, 0.05, lambda: None)

        started = reactor.seconds()
        self.process.signalProcess("TERM")
        ended = await self.output.ended
        elapsed = reactor.seconds() - started
        output = self.output.output.decode(errors="replace")
        self.assertIsInstance(ended, ProcessDone, output)  # exit code 0
        self.assertLess(elapsed, SHUTDOWN_TIMEOUT + 2, output)

        await poll.closed
        await stream.closed
        was_clean, code, _reason = await ws.closed
        self.assertTrue(poll.data.startswith(b"HTTP/1.1 200"), poll.data)
        self.assertTrue(poll.data.endswith(b"\r\n\r\ntimed out\n"), poll.data)
        self.assertIn(b"stream open\n", stream.data)
        self.assertTrue(stream.data.endswith(b"0\r\n\r\n"), stream.data)  # last chunk
        self.assertEqual((was_clean, code), (True, 1001))
        self.assertEqual(output.count("fanout_tx listening: "), 1, output)
        self.assertIn(f"http-proxy 127.0.0.1:{self.client_port}", output)
        self.assertIn(f"publish-http 127.0.0.1:{self.publish_port}", output)
        self.assertIn("zmq-pull tcp://127.0.0.1:", output)
        self.assertIn("stopped cleanly", output)
        self.assertNotIn("long-poll held", output)  # a debug event; log_level=2 hides it
        self.assertNotIn("Starting factory", output)  # per origin connection: debug only


class SigtermWorkersTests(SigtermTests):
    """The same with two workers: the supervisor drains both."""

    workers = 2


class StuckService(Service):
    """A child whose stop never finishes (an origin that never answers, say)."""

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred()


class BoundedStopTests(SynchronousTestCase):
    def test_held_subscribers_answered_and_stop_bounded(self) -> None:
        """Stopping the root closes every router subscriber (long-polls answer, streams
        end) and fires after shutdown_timeout even when a child never finishes."""
        clock = Clock()
        router = Router(clock)
        root = FanoutRoot(router, clock, SHUTDOWN_TIMEOUT)
        StuckService().setServiceParent(root)
        held = RecordingSubscriber(("http-response",))
        router.subscribe("room", held)
        root.startService()
        stopping = root.stopService()
        self.assertEqual(held.closed, ["shutdown"])
        self.assertNoResult(stopping)
        clock.advance(SHUTDOWN_TIMEOUT)
        self.successResultOf(stopping)


class LogLevelTests(SynchronousTestCase):
    def test_filter_wraps_the_observers_twistd_sets(self) -> None:
        """Only events at the configured level and above reach twistd's observers."""
        publisher = LogPublisher()
        beginner = LogBeginner(publisher, sys.stderr, sys, __import__("warnings"))
        seen: list[LogLevel] = []
        filter_twistd_logging(1, beginner)
        beginner.beginLoggingTo([lambda event: seen.append(event["log_level"])],
                                redirectStandardIO=False)
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
            publisher({"log_level": level, "log_format": "x", "log_namespace": "t",
                       "log_time": 0.0})
        self.assertEqual(seen, [LogLevel.warn, LogLevel.error])
