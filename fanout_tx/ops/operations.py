"""The service tree's root (start-up that fails loudly, the graceful, bounded stop) and the
signals that stop it. tap.py wires /metrics, /health and the stats socket onto it."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from typing_extensions import override

from fanout_tx._reactor import ISignalledReactor
from fanout_tx._twisted import listening_port
from fanout_tx.core.router import Router
from fanout_tx.ops.startup import exit_if_failed, listen_strictly, start_children

SHUTDOWN_REASON = "shutdown"

_log = Logger(namespace="fanout_tx.ops.operations")


def bound_port(service: StreamServerEndpointService) -> Deferred[IListeningPort | None]:
    """The port a started endpoint service listens on, or None when it could not bind (the
    service has logged why). Twisted keeps the listen Deferred private."""
    result: Deferred[IListeningPort | None] = Deferred()

    def fire(port: IListeningPort | None) -> IListeningPort | None:
        result.callback(port)
        return port

    listening_port(service).addCallback(fire)
    return result


class FanoutRoot(MultiService):
    """The service tree's root. A socket that cannot be opened at start-up ends the process
    (ops/startup.py). Stopping it (SIGTERM/SIGINT under twistd) stops every child
    (listeners stop accepting, WebSockets hear 1001, inputs close), then answers whatever is
    still held (long-polls get their timeout response, streams end) and gives up waiting
    after ``shutdown_timeout`` seconds so the process always exits."""

    _log = Logger()

    def __init__(self, router: Router, clock: IReactorTime, shutdown_timeout: float) -> None:
        super().__init__()
        self._router = router
        self._clock = clock
        self._timeout = shutdown_timeout
        self.after_start: list[Callable[[], None]] = []
        # Run once every child has stopped (within the same bound): closing what they shared.
        self.after_stop: list[Callable[[], Deferred[Any]]] = []
        self._startup_failures: list[str] = []

    @override
    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        listen_strictly(self)
        self._startup_failures = start_children(self, lambda c: c.privilegedStartService())

    @override
    def startService(self) -> None:
        """Exits the process when a socket could not be opened; both phases' failures are
        reported together."""
        Service.startService(self)
        listen_strictly(self)
        failures = start_children(self, lambda child: child.startService())
        exit_if_failed(self._startup_failures + failures)
        for hook in self.after_start:
            hook()

    @override
    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        pending: dict[str, Deferred[Any]] = {}
        for child in reversed(list(self)):
            stopping = maybeDeferred(child.stopService)
            pending[child.name or repr(child)] = stopping
            stopping.addBoth(self._stopped, pending, child.name or repr(child))
        self._router.close_all(SHUTDOWN_REASON)
        done: Deferred[None] = Deferred()
        everything = DeferredList(list(pending.values()), consumeErrors=True)
        timer = self._clock.callLater(self._timeout, self._gave_up, done, pending)
        everything.addCallback(lambda _: DeferredList(
            [maybeDeferred(hook) for hook in self.after_stop], consumeErrors=True))
        everything.addCallback(self._all_stopped, done, timer)
        return done

    @staticmethod
    def _stopped(result: Any, pending: dict[str, Deferred[Any]], name: str) -> Any:
        pending.pop(name, None)
        return result

    def _all_stopped(self, _result: Any, done: Deferred[None], timer: Any) -> None:
        if timer.active():
            timer.cancel()
            self._log.info("stopped cleanly")
            done.callback(None)

    def _gave_up(self, done: Deferred[None], pending: dict[str, Deferred[Any]]) -> None:
        self._log.warn("shutdown took over {timeout}s; exiting without waiting for "
                       "{services}", timeout=self._timeout, services=", ".join(sorted(pending)))
        done.callback(None)


def stop_on_signals(reactor: ISignalledReactor) -> None:
    """SIGTERM and SIGINT stop the reactor (and so the service tree, gracefully), and the
    process then exits 0. Twisted's own handlers would re-raise the signal after the stop, so
    a supervisor would see a death by signal even after a clean shutdown. Called once the
    reactor runs (it installs its handlers at start-up)."""

    def stop() -> None:
        with contextlib.suppress(ReactorNotRunning):  # a second signal while stopping
            reactor.stop()

    def handler(signum: int, _frame: Any) -> None:
        _log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        reactor.callFromThread(stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)
