"""DeadlineSet: many deadlines on one timer (outbound/deadline_set.py)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.outbound.deadline_set import DeadlineSet


class DeadlineSetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadlines: DeadlineSet[str] = DeadlineSet(self.clock, self.expired.append)

    def test_each_key_expires_at_its_own_deadline_on_one_timer(self) -> None:
        self.deadlines.add("a", 10)
        self.clock.advance(4)
        self.deadlines.add("b", 10)
        self.deadlines.add("c", 2)  # sooner than the timer: the timer moves
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.expired, ["c"])
        self.clock.advance(3.9)
        self.assertEqual(self.expired, ["c"])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["c", "a"])
        self.clock.advance(4)
        self.assertEqual((self.expired, len(self.deadlines)), (["c", "a", "b"], 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_discarded_keys_do_not_expire_and_leave_no_timer(self) -> None:
        self.deadlines.add("a", 10)
        self.deadlines.add("b", 10)
        self.assertTrue(self.deadlines.discard("a"))
        self.assertFalse(self.deadlines.discard("a"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertTrue(self.deadlines.discard("b"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.expired, [])

    def test_an_expired_key_is_gone_before_it_is_told(self) -> None:
        seen: list[bool] = []
        deadlines: DeadlineSet[str] = DeadlineSet(
            self.clock, lambda key: seen.append(deadlines.discard(key)))
        deadlines.add("a", 1)
        self.clock.advance(1)
        self.assertEqual((seen, self.clock.getDelayedCalls()), ([False], []))
