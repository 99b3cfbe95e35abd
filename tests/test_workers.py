"""ops/workers.py without processes: how a worker's log line is relayed, what ``auto`` is,
and the pool's restart policy against a fake reactor (tests/test_workers_twistd.py runs
the real thing)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.cluster.machine_bus import READY, ChannelUnion, frame
from fanout_tx.core.router import Router
from fanout_tx.ops.workers import BUS_UP_FD, QUICK_DEATH, WorkerPool, relayed, worker_count


class FakeProcesses(Clock):
    """spawnProcess that records what it was asked; the test plays the processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str],  # noqa: N802
                     env: Any = None, path: Any = None, uid: Any = None, gid: Any = None,
                     usePTY: Any = False, childFDs: Any = None) -> None:  # noqa: N803
        self.spawned.append((protocol, args, childFDs))


class WorkerPoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcesses()
        self.failures: list[str] = []
        self.pool = WorkerPool(self.reactor, 2, lambda index: ["worker", str(index)],  # type: ignore[arg-type]
                               lambda index: [100 + index], ChannelUnion(Router(Clock())),
                               5.0, self.failures.append)
        self.pool.startService()

    def worker(self, number: int) -> Any:
        return self.reactor.spawned[number][0]

    def test_each_worker_gets_its_pipes_and_socket(self) -> None:
        """fd 3 and 4 the bus, fd 5 the worker's own listening socket."""
        _, args, fds = self.reactor.spawned[1]
        self.assertEqual(args, ["worker", "1"])
        self.assertEqual((fds[3], fds[4], fds[5]), ("w", "r", 101))

    def test_a_worker_that_never_started_stops_start_up(self) -> None:
        """Ended before it said it serves, with its last output in the reason."""
        self.worker(0).childDataReceived(2, b"ImportError: no module\n")
        self.worker(0).processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual(len(self.failures), 1)
        self.assertIn("worker 0 could not start", self.failures[0])
        self.assertIn("ImportError: no module", self.failures[0])

    def test_a_worker_that_dies_is_started_again(self) -> None:
        """Once every worker served, a death is a restart: at once if the worker lived a
        second or more, after QUICK_DEATH seconds if not (no spinning crash loop)."""
        for number in (0, 1):
            self.worker(number).childDataReceived(BUS_UP_FD, frame(READY))
        self.assertEqual(self.pool.ready_count(), 2)
        self.reactor.advance(QUICK_DEATH)
        self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.worker(2).processEnded(Failure(ProcessTerminated(signal=9)))
        self.reactor.advance(QUICK_DEATH - 0.1)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertEqual(self.failures, [])


class RelayTests(SynchronousTestCase):
    def test_relayed(self) -> None:
        """A twist log line loses its timestamp and keeps its level; anything else (a
        traceback line) is relayed as it is, at info."""
        self.assertEqual(relayed("2026-12-04T20:05:11+0000 [fanout_tx.tap#warn] a [b] c"),
                         (LogLevel.warn, "a [b] c"))
        self.assertEqual(relayed("2026-12-04T20:05:11+0000 [-] Starting"),
                         (LogLevel.info, "Starting"))
        self.assertEqual(relayed('  File "x.py", line 1, in [y] z'),
                         (LogLevel.info, '  File "x.py", line 1, in [y] z'))

    def test_auto_is_one_per_core(self) -> None:
        self.assertEqual(worker_count(0), len(os.sched_getaffinity(0)))
        self.assertEqual(worker_count(3), 3)
