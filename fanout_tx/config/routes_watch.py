"""Keeps the route table current: re-reads the routes file when it changes on disk (polled)
or on SIGHUP (as Pushpin).

A file being written is not read half-way: a change is reloaded only once the file has been
still for SETTLE seconds (each further change starts the wait again). A broken edit is
logged and the previous table stays in force, so a typo never takes routing down; so does
an edit that leaves no route at all where there were some (an editor's truncate-then-write
caught in between, ``cat > routes`` waiting on its input). (differs) Pushpin installs an
empty table; here an empty file on reload is refused with a warning.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from typing_extensions import override

from fanout_tx.config.routes import RouteTable, load_routes
from fanout_tx.config.settings import ConfigError

# Seconds a changed file must stay unchanged before it is read.
SETTLE = 0.3

Stamp = tuple[int, int, int] | None


class RoutesFile:
    """The current RouteTable of one file (or of fixed ``--route`` lines, never reloaded)."""

    _log = Logger()

    def __init__(self, path: Path, override_lines: tuple[str, ...] = ()) -> None:
        self.path = path
        self.override_lines = override_lines
        self.table: RouteTable = load_routes(path, override_lines)
        self._log_notices()
        self._stamp = self.stamp()

    def _log_notices(self) -> None:
        for notice in self.table.notices:
            self._log.warn("{notice}", notice=notice)

    def stamp(self) -> Stamp:
        """What tells one version of the file from another (None: no file)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def changed(self) -> bool:
        """Whether the file differs from what was last read (and a reload is due)."""
        return not self.override_lines and self.stamp() != self._stamp

    def check(self) -> bool:
        """Reload now if the file changed; True when a new table was installed."""
        if self.override_lines:
            return False
        stamp = self.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            table = load_routes(self.path)
        except ConfigError as e:
            self._log.error("routes not reloaded, keeping the previous ones: {error}", error=str(e))
            return False
        if not len(table) and len(self.table):
            self._log.warn(
                "routes not reloaded: {path} has no routes now; keeping the previous "
                "{count} (an empty routes file is refused on reload)",
                path=str(self.path), count=len(self.table))
            return False
        self.table = table
        self._log.info("routes reloaded from {path}: {count} routes", path=str(self.path),
                       count=len(self.table))
        self._log_notices()
        return True

    def watcher(self, clock: IReactorTime, interval: float = 1.0,
                settle: float = SETTLE) -> RoutesWatcher:
        return RoutesWatcher(self, interval, clock, settle)


class RoutesWatcher(TimerService):
    """Polls the file every ``interval`` seconds; a change is read once the file has been
    unchanged for ``settle`` seconds. ``reload_now`` (SIGHUP) reads it at once."""

    _log = Logger()

    def __init__(self, routes: RoutesFile, interval: float, clock: IReactorTime,
                 settle: float) -> None:
        super().__init__(interval, self._poll)
        self.clock = clock
        self._routes = routes
        self._settle = settle
        self._seen: Stamp = None
        self._timer: IDelayedCall | None = None

    def _poll(self) -> None:
        if self._timer is not None or not self._routes.changed():
            return
        self._seen = self._routes.stamp()
        self._timer = self.clock.callLater(self._settle, self._settled)

    def _settled(self) -> None:
        stamp = self._routes.stamp()
        if stamp != self._seen:  # still being written: wait again
            self._seen = stamp
            self._timer = self.clock.callLater(self._settle, self._settled)
            return
        self._timer = None
        self._routes.check()

    def reload_now(self) -> None:
        self._cancel()
        if not self._routes.changed():
            self._log.info("SIGHUP: the routes file is unchanged")
        self._routes.check()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @override
    def stopService(self) -> Any:
        self._cancel()
        return super().stopService()


def reload_on_sighup(reactor: IReactorFromThreads, watcher: RoutesWatcher,
                     then: Callable[[], None] | None = None) -> None:
    """SIGHUP re-reads the routes file, as Pushpin does, then calls ``then`` (a supervisor
    passes the signal on to its workers). Called once the reactor runs."""

    def reload() -> None:
        watcher.reload_now()
        if then is not None:
            then()

    def handler(_signum: int, _frame: Any) -> None:
        reactor.callFromThread(reload)

    signal.signal(signal.SIGHUP, handler)
