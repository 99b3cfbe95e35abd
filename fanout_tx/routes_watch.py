"""Keeps the route table current: re-reads the routes file when it changes on disk.

A broken edit is logged and the previous table stays in force, so a typo never takes
routing down.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.application.internet import TimerService
from twisted.logger import Logger

from fanout_tx.config import ConfigError
from fanout_tx.routes import RouteTable, load_routes


class RoutesFile:
    """The current RouteTable of one file (or of fixed ``--route`` lines, never reloaded)."""

    _log = Logger()

    def __init__(self, path: Path, override_lines: tuple[str, ...] = ()) -> None:
        self.path = path
        self.override_lines = override_lines
        self.table: RouteTable = load_routes(path, override_lines)
        self._log_notices()
        self._stamp = self._read_stamp()

    def _log_notices(self) -> None:
        for notice in self.table.notices:
            self._log.warn("{notice}", notice=notice)

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def check(self) -> bool:
        """Reload if the file changed; True when a new table was installed."""
        if self.override_lines:
            return False
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.table = load_routes(self.path)
        except ConfigError as e:
            self._log.error("routes not reloaded, keeping the previous ones: {error}", error=str(e))
            return False
        self._log.info("routes reloaded from {path}: {count} routes", path=str(self.path),
                       count=len(self.table))
        self._log_notices()
        return True

    def watcher(self, interval: float = 1.0) -> TimerService:
        return TimerService(interval, self.check)
