"""backlog.Backlog, the lazy max-heap behind ``[webhooks] max_pending_bytes_total``: under
any sequence of queues whose waiting bytes grow, shrink (evicted, delivered or being
attempted) or that close, it names a queue with the most bytes waiting, and its heap stays
within a constant factor of the number of queues."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.transports.webhooks.backlog import REBUILD_SLACK, Backlog


@dataclass(eq=False)
class Queue:
    waiting_bytes: int = 0
    closed: bool = False


# (queue index, change in bytes, close it); a shrink never goes below zero.
OPERATIONS = st.lists(st.tuples(st.integers(0, 7), st.integers(-500, 500), st.booleans()),
                      max_size=300)


class BacklogTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(OPERATIONS)
    def test_names_a_largest_queue(self, operations: list[tuple[int, int, bool]]) -> None:
        queues = [Queue() for _ in range(8)]
        backlog: Backlog[Queue] = Backlog(lambda: [q for q in queues if not q.closed])
        for index, delta, close in operations:
            queue = queues[index]
            if queue.closed:
                continue
            if close and delta < 0:
                queue.waiting_bytes, queue.closed = 0, True
            else:
                queue.waiting_bytes = max(0, queue.waiting_bytes + delta)
                if delta > 0:
                    backlog.track(queue)
            largest = backlog.pop_largest()
            most = max(q.waiting_bytes for q in queues)
            if most == 0:
                self.assertIsNone(largest)
            else:
                assert largest is not None
                self.assertFalse(largest.closed)
                self.assertEqual(largest.waiting_bytes, most)
                backlog.track(largest)
            self.assertLessEqual(len(backlog._heap), 2 * len(queues) + REBUILD_SLACK + 1)
