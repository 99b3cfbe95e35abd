"""The process's garbage-collector policy, applied once by the twistd plugin.

A push server holds many long-lived connections, a few dozen container objects each. With
CPython's default thresholds (700, 10, 10) the collector keeps running while connections
pile up, and a full collection walks every held connection: measured with 10,000 held
streams, 13 full collections took 2.2 s in all (up to 0.47 s each), a third of the set-up
time and the tail of every latency figure. A larger young generation lets short-lived
request garbage die there and runs the old generations far less often; freezing what
exists at start-up (modules, classes, config) takes it out of every later collection.

Revisited for issue 19 (memory under churn), and kept. Until then every closed connection
left ~5 kB in reference cycles (request <-> hold, session <-> hold, the WebSocket upgrade's
channel <-> request, autobahn's futures, Twisted's connector links) that these thresholds
left waiting: ten cycles of 10,000 streams opened, held and closed on one server grew its
RSS from 216 to 535 MB (cycle 2 to 10), until a full collection stalled a cycle. A closed
connection now leaves no cycle (tests/test_churn_garbage.py), so reference counting frees
it at once whatever the thresholds: the same run stays at 165 MB in every cycle (bench/
README.md, "Churn"). What is left is what the thresholds are for: not walking the held
connections over and over (building 10,000 connections' worth of objects runs the collector
~300 times with the defaults, ~20 times and never fully with these; tests/test_gc_tuning.py).
Cycles are still collected.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    gc.set_threshold(*THRESHOLDS)
    gc.collect()
    gc.freeze()
