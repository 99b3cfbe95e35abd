"""Start-up that fails loudly: an address that cannot be bound stops the process.

Left to itself, twistd logs a traceback for a listener that cannot bind and keeps running,
exit code 0, serving nothing: with the client port still held by Pushpin during a migration,
a supervisor would see a healthy service. Here every listener and ZeroMQ socket that cannot
be opened is named with the reason, and the process exits 1 before the reactor runs.

How it exits: StartupAbandonedError is raised out of ``startService``. A daemonized twistd
reports an exception to its waiting parent (which exits 1); a SystemExit would leave the
parent waiting forever. In the foreground the exception ends the process (exit 1), and the
excepthook the plugin installs (``quiet_startup_failures``) prints its one line instead of
a traceback. tests/test_tap.py runs both with a real twistd.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from types import TracebackType

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from fanout_tx._twisted import raise_bind_errors

_log = Logger(namespace="fanout_tx.ops.startup")


class StartupError(Exception):
    """A socket could not be opened at start-up; the text says which address and why."""


class StartupAbandonedError(Exception):
    """Start-up is abandoned; the text lists every address that could not be opened."""


def listen_strictly(root: MultiService) -> None:
    """Make every endpoint listener under ``root`` raise when it cannot bind, rather than log.

    ``_raiseSynchronously`` is StreamServerEndpointService's own switch for this (private;
    tests/test_tap.py would notice if it stopped working).
    """
    for service in _walk(root):
        if isinstance(service, StreamServerEndpointService):
            raise_bind_errors(service)


def start_children(root: MultiService, start: Callable[[IService], None]) -> list[str]:
    """``start(child)`` for each child of ``root``; what could not be opened, by child."""
    failures = []
    for child in root:
        try:
            start(child)
        except (CannotListenError, StartupError) as e:
            failures.append(f"{child.name}: {_reason(e)}")
    return failures


def exit_if_failed(failures: list[str]) -> None:
    """Log each failure and abandon start-up (StartupAbandonedError), if there is any."""
    if failures:
        for failure in failures:
            _log.critical("cannot start {failure}", failure=failure)
        _log.critical("fanout_tx not started: each address above must be free and usable")
        raise StartupAbandonedError("; ".join(failures))


def abandon_startup(reactor: IReactorCore, reason: str) -> None:
    """Start-up failed after the reactor started (a worker could not start): log why,
    stop everything, and exit 1 once twistd has cleaned up (its pidfile included)."""
    _log.critical("fanout_tx not started: {reason}", reason=reason)
    atexit.register(_exit_failed)
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def quiet_startup_failures() -> None:
    """Make an uncaught StartupAbandonedError print one line, not a traceback (the process
    still exits 1); other exceptions keep the hook they had. Called once by the plugin."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException,
             trace: TracebackType | None) -> None:
        if isinstance(error, StartupAbandonedError):
            sys.stderr.write(f"fanout_tx not started: {error}\n")
        else:
            previous(kind, error, trace)

    sys.excepthook = hook


def _reason(error: Exception) -> str:
    if isinstance(error, CannotListenError):
        host = error.interface or "*"
        cause = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return f"cannot listen on {host}:{error.port}: {cause}"
    return str(error)


def _walk(service: IService) -> Iterator[IService]:
    yield service
    if isinstance(service, MultiService):
        for child in service:
            yield from _walk(child)
