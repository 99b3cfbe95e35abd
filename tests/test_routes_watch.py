"""The routes file is re-read when it changes; a broken edit keeps the previous table."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.config.routes_watch import RoutesFile
from fanout_tx.config.settings import ConfigError

try:
    from twisted.internet.testing import EventLoggingObserver
except ImportError:  # pragma: no cover
    from twisted.test.proto_helpers import EventLoggingObserver  # type: ignore[no-redef]


class RoutesFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.write_text("* 127.0.0.1:8080\n")
        self.routes = RoutesFile(self.path)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def edit(self, text: str) -> None:
        """Rewrite the file and move its mtime on, so even a same-size edit is seen."""
        stat = self.path.stat()
        self.path.write_text(text)
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    def first_target_port(self) -> int:
        return self.routes.table.routes[0].targets[0].port

    def test_pushpin_only_options_are_logged_on_load(self) -> None:
        self.edit("*,session 127.0.0.1:8080\n")
        self.assertTrue(self.routes.check())
        warnings = [e for e in self.events if "not supported here" in e.get("notice", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("'session'", warnings[0]["notice"])

    def test_unchanged_file_is_not_reloaded(self) -> None:
        table = self.routes.table
        self.assertFalse(self.routes.check())
        self.assertIs(self.routes.table, table)

    def test_reload_on_change(self) -> None:
        """A changed file installs the new table and logs how many routes it has."""
        self.edit("* 127.0.0.1:9090\nexample.com 127.0.0.1:9091\n")
        self.assertTrue(self.routes.check())
        self.assertEqual(len(self.routes.table), 2)
        self.assertEqual(self.first_target_port(), 9091)
        [event] = [e for e in self.events if "reloaded" in e["log_format"]]
        self.assertEqual(event["count"], 2)

    def test_broken_edit_keeps_the_old_table(self) -> None:
        """A broken edit is logged with file and line and the old routes stay; fixing the
        file later is picked up."""
        table = self.routes.table
        self.edit("* 127.0.0.1:8080\n*,bogus 127.0.0.1:1\n")
        self.assertFalse(self.routes.check())
        self.assertIs(self.routes.table, table)
        [event] = [e for e in self.events if "not reloaded" in e["log_format"]]
        self.assertIn(f"{self.path}:2: unknown route option 'bogus'", event["error"])
        self.assertFalse(self.routes.check())  # same broken file: no second message
        self.edit("* 127.0.0.1:7070\n")
        self.assertTrue(self.routes.check())
        self.assertEqual(self.first_target_port(), 7070)

    def test_deleted_file_keeps_the_old_table(self) -> None:
        table = self.routes.table
        self.path.unlink()
        self.assertFalse(self.routes.check())
        self.assertIs(self.routes.table, table)

    def test_route_overrides_are_never_reloaded(self) -> None:
        fixed = RoutesFile(self.path, ("* 127.0.0.1:1",))
        self.edit("* 127.0.0.1:2\n")
        self.assertFalse(fixed.check())
        self.assertEqual(fixed.table.routes[0].targets[0].port, 1)

    def test_broken_file_at_start_is_an_error(self) -> None:
        self.path.write_text("nonsense\n")
        error = self.assertRaises(ConfigError, RoutesFile, self.path)
        self.assertEqual(error.line, 1)

    def test_watcher_service_polls_on_its_clock(self) -> None:
        """The watcher is a TimerService; a tick that sees a change reads the file once it
        has been still for the settle delay."""
        clock = Clock()
        watcher = self.routes.watcher(interval=2.0, clock=clock, settle=0.3)
        watcher.startService()
        self.edit("* 127.0.0.1:6060\n")
        clock.advance(2)
        self.assertEqual(self.first_target_port(), 8080)
        clock.advance(0.3)
        self.assertEqual(self.first_target_port(), 6060)
        watcher.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_settle_delay_is_rearmed_by_further_changes(self) -> None:
        """A file still being written (changed again within the settle delay) is not read
        until it stops changing; stopping the watcher cancels a pending read."""
        clock = Clock()
        watcher = self.routes.watcher(interval=1.0, clock=clock, settle=0.3)
        watcher.startService()
        self.edit("* 127.0.0.1:")
        clock.advance(1)
        clock.advance(0.2)
        self.edit("* 127.0.0.1:5050\n")
        clock.advance(0.1)  # the first wait ends: the file changed meanwhile, wait again
        self.assertEqual(self.first_target_port(), 8080)
        self.assertEqual([e for e in self.events if "not reloaded" in e["log_format"]], [])
        clock.advance(0.3)
        self.assertEqual(self.first_target_port(), 5050)
        self.edit("* 127.0.0.1:4040\n")
        clock.advance(1)
        watcher.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.first_target_port(), 5050)

    def test_empty_file_keeps_the_old_table(self) -> None:
        """A reload that finds no routes (a file caught while being rewritten, or emptied
        on purpose) keeps the previous table and says why, once."""
        table = self.routes.table
        self.edit("# nothing yet\n")
        self.assertFalse(self.routes.check())
        self.assertIs(self.routes.table, table)
        [event] = [e for e in self.events if "has no routes now" in e["log_format"]]
        self.assertEqual(event["count"], 1)
        self.assertFalse(self.routes.check())
        self.edit("* 127.0.0.1:3030\n")
        self.assertTrue(self.routes.check())
        self.assertEqual(self.first_target_port(), 3030)
