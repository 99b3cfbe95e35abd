"""ops/startup.py: start-up that fails after the reactor runs (a worker that could not start)
ends the process with exit status 1, once twistd has cleaned up."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.ops import startup


class AbandonTests(SynchronousTestCase):
    def test_logged_stopped_and_exit_1_at_exit(self) -> None:
        """The reason is logged at critical, the reactor is stopped, and exit status 1 is
        set for when the process ends (not before: twistd still removes its pidfile)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        registered: list[Callable[[], None]] = []
        exits: list[int] = []
        self.patch(startup.atexit, "register", registered.append)
        self.patch(startup.os, "_exit", exits.append)
        reactor = MemoryReactor()
        reactor.running = True
        startup.abandon_startup(reactor, "worker 0 could not start")
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(exits, [])
        [event] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertEqual(event["reason"], "worker 0 could not start")
        for hook in registered:
            hook()
        self.assertEqual(exits, [1])
