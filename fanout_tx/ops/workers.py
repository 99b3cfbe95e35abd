"""``[runner] workers`` > 1: the supervisor's worker processes.

The process twistd starts keeps what must run once per machine (every publish input, the
command and stats sockets, XMPP, webhooks, Redis) and starts ``count`` workers, each a full
replica of the client side (proxy, WebSocket, its own router) serving the client ports
(ops/shared_ports.py). Each worker is ``python -m twisted fanout --worker N`` with the
supervisor's own options, and inherits:

- fd 3, the machine bus down (items, in order; cluster/machine_bus.py), fd 4 the bus up;
- fd 5 onwards, its listening socket for each client address;
- stdout and stderr, whose lines the supervisor logs prefixed ``worker N``.

A worker that ends is logged and started again at once (after a second if it lived less
than one: a crash loop must not spin). One that ends before it ever started serving stops
start-up (``on_startup_failure``). Stopping the pool asks every worker to drain (SIGTERM),
and kills what is left after ``shutdown_timeout``. A worker gone or stuck does not stop
the others: the supervisor queues at most MAX_BACKLOG bytes for a worker that does not
read its bus, then restarts it (its clients reconnect to the others meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._reactor import IWorkersReactor
from fanout_tx.cluster.machine_bus import (
    CHANNEL_ADDED,
    CHANNEL_REMOVED,
    METRICS,
    READY,
    STATS,
    ChannelUnion,
    FrameReader,
    WorkerBus,
)

BUS_DOWN_FD, BUS_UP_FD, FIRST_PORT_FD = 3, 4, 5
# Bytes the supervisor queues for one worker that does not read its bus before restarting it.
MAX_BACKLOG = 256 * 1024 * 1024
# Output kept per worker for a start-up failure's report, and longest log line relayed.
TAIL_LINES = 20
MAX_LINE = 16 * 1024
METRICS_INTERVAL = 1.0  # seconds between a worker's /metrics reports
QUICK_DEATH = 1.0  # seconds: a worker that ends sooner is restarted after this long

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error, "critical": LogLevel.critical}


def worker_command(index: int, arguments: Sequence[str]) -> list[str]:
    """The command line of worker ``index``: the twist runner with this plugin, logging
    text to stdout, and the supervisor's own plugin options."""
    return [sys.executable, "-m", "twisted", "--log-format=text", "fanout",
            "--worker", str(index), *arguments]


def relayed(line: str) -> tuple[LogLevel, str]:
    """A worker's log line as the supervisor logs it: its level, its text without the
    timestamp (``2026-... [namespace#level] text``)."""
    head, sep, text = line.partition("] ")
    if not sep or not head[:1].isdigit() or " " in head.partition(" [")[2]:
        return LogLevel.info, line
    _, _, level = head.rpartition("#")
    return _LEVELS.get(level, LogLevel.info), text


@implementer(IPushProducer)
class Worker(ProcessProtocol):
    """One worker process: its pipes, its output, its state."""

    _log = Logger(namespace="fanout_tx.ops.workers")

    def __init__(self, pool: WorkerPool, index: int, started_at: float) -> None:
        self.pool = pool
        self.index = index
        self.started_at = started_at
        self.ready = False
        self.metrics = b""
        self._frames = FrameReader(self._frame, self._oversized)
        self._partial: dict[int, bytes] = {1: b"", 2: b""}
        self.tail: list[str] = []
        self._backlog: int | None = None  # bytes written while the pipe is full

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        writer = getattr(self.transport, "pipes", {}).get(BUS_DOWN_FD)
        if writer is not None:
            writer.registerProducer(self, True)

    def send(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self._backlog is not None:
            self._backlog += len(data)
            if self._backlog > MAX_BACKLOG:
                self._log.error("worker {index} has not read {bytes} bytes of its bus; "
                                "restarting it", index=self.index, bytes=self._backlog)
                self._backlog = None
                self.kill()
                return
        self.transport.writeToChild(BUS_DOWN_FD, data)

    def kill(self) -> None:
        self.signal("KILL")

    def signal(self, name: str) -> None:
        transport: IProcessTransport | None = self.transport
        if transport is not None:
            with contextlib.suppress(ProcessExitedAlready):
                transport.signalProcess(name)

    # IPushProducer: the down pipe is full / drained.
    def pauseProducing(self) -> None:  # noqa: N802
        if self._backlog is None:
            self._backlog = 0

    def resumeProducing(self) -> None:  # noqa: N802
        self._backlog = None

    def stopProducing(self) -> None:  # noqa: N802
        self._backlog = None

    @override
    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        if childFD == BUS_UP_FD:
            self._frames.dataReceived(data)
        elif childFD in self._partial:
            self._lines(childFD, data)

    def _lines(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._partial[fd] + data).split(b"\n")
        self._partial[fd] = rest[-MAX_LINE:]
        for raw in lines:
            line = raw[:MAX_LINE].decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.tail = [*self.tail[-(TAIL_LINES - 1):], line]
            level, text = relayed(line)
            self._log.emit(level, "worker {index}: {text}", index=self.index, text=text)

    def _frame(self, kind: bytes, body: bytes) -> None:
        channels = self.pool.channels
        if kind == CHANNEL_ADDED:
            channels.add(self, body.decode("utf-8", "surrogatepass"))
        elif kind == CHANNEL_REMOVED:
            channels.remove(self, body.decode("utf-8", "surrogatepass"))
        elif kind == METRICS:
            self.metrics = body
        elif kind == STATS:
            self.pool.on_stats(body)
        elif kind == READY:
            self.ready = True
            self.pool.worker_ready(self)

    def _oversized(self, length: int) -> None:
        self._log.error("worker {index} sent a {length}-byte frame; restarting it",
                        index=self.index, length=length)
        self.kill()

    @override
    def processEnded(self, reason: Failure) -> None:
        for fd in self._partial:
            self._lines(fd, b"\n")
        self.pool.worker_ended(self, reason)


class WorkerPool(Service):
    """Starts ``count`` workers, keeps them running, stops them within the bound."""

    _log = Logger(namespace="fanout_tx.ops.workers")

    def __init__(self, reactor: IWorkersReactor, count: int,
                 command: Callable[[int], list[str]], fds: Callable[[int], list[int]],
                 channels: ChannelUnion, shutdown_timeout: float,
                 on_startup_failure: Callable[[str], None]) -> None:
        self._reactor = reactor
        self.count = count
        self._command = command
        self._fds = fds
        self.channels = channels
        self._timeout = shutdown_timeout
        self._on_startup_failure = on_startup_failure
        self.workers: dict[int, Worker] = {}
        self.on_stats: Callable[[bytes], None] = lambda _message: None
        # The first frame each worker gets (MachineFanout.snapshot: the channels' last ids).
        self.greeting: Callable[[], bytes] | None = None
        self._started_once = False
        self._ended: dict[int, Deferred[None]] = {}
        self._restarts: dict[int, IDelayedCall] = {}

    @override
    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = Worker(self, index, self._reactor.seconds())
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", BUS_DOWN_FD: "w", BUS_UP_FD: "r"}
        for offset, fd in enumerate(self._fds(index)):
            child_fds[FIRST_PORT_FD + offset] = fd
        command = self._command(index)
        self._reactor.spawnProcess(worker, command[0], command, env=dict(os.environ),
                                   childFDs=child_fds)
        self.workers[index] = worker
        if self.greeting is not None:
            worker.send(self.greeting())

    def broadcast(self, data: bytes) -> None:
        """``data`` (a bus frame) to every worker, in the order of calls."""
        for worker in self.workers.values():
            worker.send(data)

    def signal_all(self, name: str) -> None:
        for worker in self.workers.values():
            worker.signal(name)

    def reports(self) -> list[tuple[int, bytes]]:
        """Each worker's last /metrics text (read from the metrics thread: a copy)."""
        return [(index, worker.metrics) for index, worker in tuple(self.workers.items())
                if worker.metrics]

    def ready_count(self) -> int:
        return sum(worker.ready for worker in self.workers.values())

    def worker_ready(self, worker: Worker) -> None:
        self._log.info("worker {index} serving (pid {pid})", index=worker.index,
                       pid=getattr(worker.transport, "pid", None))
        self._started_once = self._started_once or self.ready_count() == self.count

    def worker_ended(self, worker: Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self.channels.forget(worker)
        ended = self._ended.pop(worker.index, None)
        if ended is not None:
            ended.callback(None)
        if not self.running:
            return
        how = str(reason.value).strip()
        if not worker.ready and not self._started_once:
            tail = "\n".join(worker.tail)
            self._on_startup_failure(f"worker {worker.index} could not start ({how}):\n{tail}")
            return
        lived = self._reactor.seconds() - worker.started_at
        delay = 0.0 if lived >= QUICK_DEATH else QUICK_DEATH
        self._log.error("worker {index} ended ({how}); starting it again{later}",
                        index=worker.index, how=how,
                        later=f" in {delay:g}s" if delay else "")
        self._restarts[worker.index] = self._reactor.callLater(delay, self._spawn,
                                                               worker.index)

    @override
    def stopService(self) -> Deferred[None]:
        """SIGTERM to every worker (each drains within the same bound); SIGKILL to any
        still running after ``shutdown_timeout``. Fires once every worker has ended."""
        super().stopService()
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        waits = []
        for index, worker in self.workers.items():
            ended: Deferred[None] = Deferred()
            self._ended[index] = ended
            waits.append(ended)
            worker.signal("TERM")
        timer = self._reactor.callLater(self._timeout, self.signal_all, "KILL")

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        return DeferredList(waits).addCallback(done)


def worker_count(configured: int) -> int:
    """``[runner] workers``: ``auto`` (0) is one per core this process may run on."""
    return configured or len(os.sched_getaffinity(0))


class WorkerLink(Service):
    """A worker's side of the machine bus, on its inherited pipes: reads items for its
    router (cluster/machine_bus.WorkerBus), says when it serves, and reports its /metrics
    text every METRICS_INTERVAL seconds."""

    _log = Logger(namespace="fanout_tx.ops.workers")

    def __init__(self, reactor: IReactorFDSet, clock: IReactorTime, bus: WorkerBus,
                 metrics: Callable[[], bytes]) -> None:
        self._reactor = reactor
        self._clock = clock
        self.bus = bus
        self._metrics = metrics
        self._loop: LoopingCall | None = None

    @override
    def startService(self) -> None:
        super().startService()
        # (mypy reads the Windows StandardIO, which takes no descriptors)
        StandardIO(self.bus, stdin=BUS_DOWN_FD, stdout=BUS_UP_FD,  # type: ignore[call-arg]
                   reactor=self._reactor)
        self._loop = LoopingCall(self._report)
        self._loop.clock = self._clock
        self._loop.start(METRICS_INTERVAL, now=True)

    def _report(self) -> None:
        try:
            self.bus.send(METRICS, self._metrics())
        except Exception:  # an exception would stop the LoopingCall for good
            self._log.failure("worker metrics could not be reported")

    def ready(self) -> None:
        self.bus.send(READY)

    @override
    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
