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

    def test_held_connections_are_walked_far_less_often(self) -> None:
        """Why the thresholds stay (issue 19): building 10,000 connections' worth of
        long-lived objects runs the collector hundreds of times with CPython's defaults
        (each pass over the young objects, every tenth over the middle generation), about
        twenty with ours and never a full collection."""
        default = self.collections((700, 10, 10))
        ours = self.collections(THRESHOLDS)
        self.assertGreater(len(default), 10 * len(ours))
        self.assertNotIn(2, ours)

    def collections(self, thresholds: tuple[int, int, int]) -> list[int]:
        """The generations collected while 200,000 containers are made and kept."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        gc.set_threshold(*thresholds)
        gc.collect()
        started: list[int] = []

        def count(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(info["generation"])

        gc.callbacks.append(count)
        try:
            held = [[{} for _ in range(20)] for _ in range(10_000)]
        finally:
            gc.callbacks.remove(count)
        self.assertEqual(len(held), 10_000)
        return started
