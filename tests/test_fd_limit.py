"""fanout_tx/ops/fd_limit.py: the open-files limit raised at start-up, and client_maxconn kept
below what it allows."""

from __future__ import annotations

import resource

from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.ops.fd_limit import RESERVED, connection_cap, raise_open_files_limit


class OpenFilesTests(SynchronousTestCase):
    def test_soft_limit_raised_to_hard(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY or hard < 2 * RESERVED:
            lowered = min(soft, 4 * RESERVED)
        else:
            lowered = hard // 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        now = raise_open_files_limit()
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], now)
        expected = lowered if hard == resource.RLIM_INFINITY else hard
        self.assertEqual(now, expected)

    def test_cap(self) -> None:
        self.assertEqual(connection_cap(50_000, 20_000), 20_000 - RESERVED)
        self.assertEqual(connection_cap(100, 20_000), 100)
        self.assertEqual(connection_cap(0, 1024), 1024 - RESERVED)  # "no limit" still fits
        self.assertEqual(connection_cap(100, resource.RLIM_INFINITY), 100)
        self.assertEqual(connection_cap(100, 10), 1)
