"""Replays from history while the lookup is outstanding (as with Redis): live items wait,
then go out after the replayed ones, each item once; for the shared Replay helper and for
HTTP streams."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fanout_tx.core.interfaces import IHistory
from fanout_tx.core.items import Item, parse_item
from fanout_tx.core.replay import Replay
from fanout_tx.grip.instruct import Channel, Instruct, Response
from fanout_tx.transports.http.hold import HeldStream
from tests.test_hold import HoldTestsMixin


def item(number: int, channel: str = "c") -> Item:
    return parse_item({"channel": channel, "id": f"i{number}", "formats": {
        "ws-message": {"content": f"m{number}"},
        "http-stream": {"content": f"s{number}\n"}}})


@implementer(IHistory)
class SlowHistory:
    """Answers each lookup only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred[Any]]] = []

    def record(self, item: Item) -> None:
        """Records nothing: answers are the test's."""

    def since(self, channel: str, item_id: str, limit: int) -> Deferred[list[Item] | None]:
        d: Deferred[list[Item] | None] = Deferred()
        self.pending.append((f"since {channel} {item_id}", d))
        return d

    def last(self, channel: str, count: int) -> Deferred[list[Item]]:
        d: Deferred[list[Item]] = Deferred()
        self.pending.append((f"last {channel} {count}", d))
        return d


class ReplayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.history = SlowHistory()
        self.replay = Replay(("ws-message",))
        self.sent: list[str | None] = []

    def send(self, item: Item, fmt: Any, prepared: Any) -> None:
        self.sent.append(item.id)

    def deliver(self, entry: Item) -> None:
        """What a subscriber's deliver does with the replay."""
        if self.replay.waiting is not None:
            self.replay.waiting.append((entry, entry.formats["ws-message"], "prepared"))
        else:
            self.send(entry, None, None)

    def test_live_items_wait_behind_the_replay(self) -> None:
        """Items delivered during the lookup go out after the replayed ones; those that
        were also replayed go out once."""
        self.replay.start(self.history, "c", "i1", 0, self.send)
        self.deliver(item(3))
        self.deliver(item(4))
        self.assertEqual(self.sent, [])
        self.history.pending[0][1].callback([item(2), item(3)])
        self.assertEqual(self.sent, ["i2", "i3", "i4"])
        self.assertIsNone(self.replay.waiting)

    def test_two_lookups(self) -> None:
        """With two lookups out, live items wait for both."""
        self.replay.start(self.history, "c", "i1", 0, self.send)
        self.replay.start(self.history, "d", None, 1, self.send)
        self.assertEqual([name for name, _d in self.history.pending],
                         ["since c i1", "last d 1"])
        self.deliver(item(5))
        self.history.pending[0][1].callback([item(2)])
        self.assertEqual(self.sent, ["i2"])
        self.history.pending[1][1].callback([item(9, channel="d")])
        self.assertEqual(self.sent, ["i2", "i9", "i5"])

    def test_gone_failed_and_off(self) -> None:
        """An id older than history or a failed lookup replays nothing (logged); with
        history off or nothing asked nothing is looked up."""
        self.replay.start(self.history, "c", "old", 0, self.send)
        self.deliver(item(7))
        self.history.pending[0][1].callback(None)
        self.replay.start(self.history, "c", "x", 0, self.send)
        self.history.pending[1][1].errback(ConnectionError("redis away"))
        self.assertEqual(self.sent, ["i7"])
        self.replay.start(None, "c", "x", 0, self.send)
        self.replay.start(self.history, "c", None, 0, self.send)
        self.assertEqual(len(self.history.pending), 2)
        self.assertIsNone(self.replay.waiting)


class HeldStreamReplayTests(HoldTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setup_hold()
        self.history = SlowHistory()
        self.router.history = self.history

    def test_live_items_wait_behind_the_replay(self) -> None:
        """A stream held with a prev-id behind the channel: what arrives during the lookup
        is written after the replayed items, once each; then the stream is live."""
        self.router.set_last_id("c", "i3")
        instruct = Instruct(hold="stream", channels=(Channel("c", "i1"),),
                            response=Response(200, None, (), b"start\n"))
        _protocol, transport, _hold = self.connect(lambda request: HeldStream(
            request, self.router, self.clock, instruct, self.origin))
        self.router.publish(parse_item({"channel": "c", "id": "i4", "prev-id": "i3",
                                        "formats": {"http-stream": {"content": "s4\n"}}}))
        self.clock.advance(0)
        self.assertNotIn(b"s4", transport.value())
        (name, lookup), = self.history.pending
        self.assertEqual(name, "since c i1")
        lookup.callback([item(2), item(3), item(4)])
        self.clock.advance(0)
        body = transport.value().split(b"\r\n\r\n", 1)[1]
        self.assertEqual(re.findall(rb"s(\d)\n", body), [b"2", b"3", b"4"])
        self.router.publish(parse_item({"channel": "c", "id": "i5", "prev-id": "i4",
                                        "formats": {"http-stream": {"content": "s5\n"}}}))
        self.clock.advance(0)
        self.assertIn(b"s5", transport.value())  # in sequence: live, no lookup
        self.assertEqual(len(self.history.pending), 1)
