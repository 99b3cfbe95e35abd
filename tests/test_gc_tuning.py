"""fanout_tx/ops/gc_tuning.py: the collector policy the twistd plugin applies."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.ops.gc_tuning import THRESHOLDS, tune_gc


class TuneGcTests(SynchronousTestCase):
    def test_sets_thresholds_and_freezes_what_exists(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        tune_gc()
        self.assertEqual(gc.get_threshold(), THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)
        # Cycles made afterwards are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        self.assertGreaterEqual(gc.collect(), 1)
