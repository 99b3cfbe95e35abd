"""The in-machine bus (cluster/machine_bus.py) in memory: what the supervisor sends reaches a
worker's router as the supervisor's own router got it; the channel union counts every
router on the machine once."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.cluster.machine_bus import (
    CHANNEL_ADDED,
    CHANNEL_REMOVED,
    ITEMS,
    MAX_FRAME,
    METRICS,
    STATS,
    ChannelUnion,
    FrameReader,
    MachineBus,
    MachineFanout,
    WorkerBus,
    frame,
)
from fanout_tx.core.formats.base import Format
from fanout_tx.core.history import MemoryHistory
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router
from tests.support.helpers import RecordingSubscriber


def stream_item(content: bytes, item_id: str | None = None, prev_id: str | None = None,
                channel: str = "room") -> Item:
    return Item(channel, {"http-stream": Format("http-stream", content=content)},
                id=item_id, prev_id=prev_id)


class Frames:
    """Frames as the other end of a pipe splits them."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, bytes]] = []
        self.reader = FrameReader(lambda kind, body: self.received.append((kind, body)),
                                  self.oversized)
        self.too_long: list[int] = []

    def oversized(self, length: int) -> None:
        self.too_long.append(length)


class MachineFanoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.local = Router(self.clock)
        self.sent: list[bytes] = []
        self.fanout = MachineFanout(self.local, self.sent.append)
        self.worker_router = Router(self.clock)
        self.worker = WorkerBus(self.worker_router, lambda: None)
        self.worker.makeConnection(StringTransport())

    def carry(self) -> None:
        """What was broadcast, read by the worker's end."""
        for data in self.sent:
            self.worker.dataReceived(data)
        self.sent.clear()

    def test_items_reach_the_worker_in_order_once(self) -> None:
        """One batch encoded once for every worker; the worker's router sequences it as the
        supervisor's does (prev-id held back, a repeated id dropped)."""
        here, there = RecordingSubscriber(), RecordingSubscriber()
        self.local.subscribe("room", here)
        self.worker_router.subscribe("room", there)
        self.fanout.publish(stream_item(b"zero", "0"))
        MachineBus(self.fanout).publish([stream_item(b"second", "2", "1"),
                                         stream_item(b"first", "1", "0"),
                                         stream_item(b"first", "1", "0")], "http")
        self.assertEqual(len(self.sent), 2)  # one frame per publish, not per item
        self.carry()
        self.assertEqual(here.contents, [b"zero", b"first", b"second"])
        self.assertEqual(there.contents, here.contents)

    def test_items_on_channels_nothing_here_holds_keep_their_bookkeeping(self) -> None:
        """An item on a channel the worker holds nothing of is not decoded beyond channel
        and id, yet the worker's router ends as ``publish`` would leave it: the channel's
        last id set, the id remembered (the same id later, once subscribed, is a
        duplicate), and items on held channels delivered in order between them."""
        self.assertFalse(self.worker_router.needs_whole_item("elsewhere"))
        there = RecordingSubscriber()
        self.worker_router.subscribe("room", there)
        self.fanout.publish_items([stream_item(b"a", "1", channel="elsewhere"),
                                   stream_item(b"held", "h1"),
                                   stream_item(b"b", None, channel="elsewhere")])
        self.carry()
        self.assertEqual(there.contents, [b"held"])
        self.assertEqual(self.worker_router.last_id("elsewhere"), "1")
        late = RecordingSubscriber()
        self.worker_router.subscribe("elsewhere", late)
        self.assertTrue(self.worker_router.needs_whole_item("elsewhere"))
        self.fanout.publish_items([stream_item(b"a", "1", channel="elsewhere"),
                                   stream_item(b"c", "2", "1", channel="elsewhere")])
        self.carry()
        self.assertEqual(late.contents, [b"c"])  # "1" was a duplicate, "2" follows it

    def test_a_history_needs_every_item_whole(self) -> None:
        """A worker that keeps a history of its own decodes every item (history replays
        need the formats)."""
        self.worker_router.history = MemoryHistory(self.clock, 10, 3600, 1 << 20)
        self.assertTrue(self.worker_router.needs_whole_item("elsewhere"))

    def test_last_ids_and_recover(self) -> None:
        """A Redis snapshot's last id and a recover reach every worker."""
        subscriber = RecordingSubscriber()
        self.worker_router.subscribe("room", subscriber)
        self.fanout.set_last_id("room", "41")
        self.fanout.recover_all()
        self.carry()
        self.assertEqual(self.worker_router.last_id("room"), "41")
        self.assertEqual(subscriber.recovered, 1)

    def test_a_new_worker_starts_with_the_last_ids(self) -> None:
        """A worker started late (a restart) gets every channel's last id first."""
        self.fanout.publish(stream_item(b"x", "7"))
        self.fanout.publish(stream_item(b"y", "3", channel="other"))
        late = Router(self.clock)
        bus = WorkerBus(late, lambda: None)
        bus.makeConnection(StringTransport())
        bus.dataReceived(self.fanout.snapshot())
        self.assertEqual(late.last_ids(), [("room", "7"), ("other", "3")])

    def test_a_bad_frame_is_logged_and_skipped(self) -> None:
        """A frame that does not decode is logged; the next one is handled."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        subscriber = RecordingSubscriber()
        self.worker_router.subscribe("room", subscriber)
        self.worker.dataReceived(frame(ITEMS, b"not json") + frame(b"?"))
        self.fanout.publish(stream_item(b"after"))
        self.carry()
        self.assertEqual(subscriber.contents, [b"after"])
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.assertTrue(any("unknown frame kind" in str(e.get("log_format")) for e in events))

    def test_worker_reports_its_channels(self) -> None:
        """Channels the worker's router gains and loses go up; those it held before the bus
        connected too."""
        router = Router(self.clock)
        router.subscribe("early", RecordingSubscriber())
        transport = StringTransport()
        worker = WorkerBus(router, lambda: None)
        worker.makeConnection(transport)
        subscriber = RecordingSubscriber()
        router.subscribe("room", subscriber)
        router.unsubscribe("room", subscriber)
        up = Frames()
        up.reader.dataReceived(transport.value())
        self.assertEqual(up.received, [(CHANNEL_ADDED, b"early"), (CHANNEL_ADDED, b"room"),
                                       (CHANNEL_REMOVED, b"room")])

    def test_reports_are_dropped_while_the_supervisor_does_not_read(self) -> None:
        """The pipe up full (the transport pauses the bus): metrics and stats frames are
        dropped, not queued; channel frames still go; after resume reports go again."""
        router = Router(self.clock)
        transport = StringTransport()
        worker = WorkerBus(router, lambda: None)
        worker.makeConnection(transport)
        self.assertIs(transport.producer, worker)
        worker.pauseProducing()
        worker.send(METRICS, b"m 1")
        worker.send(STATS, b"s")
        router.subscribe("room", RecordingSubscriber())
        worker.resumeProducing()
        worker.send(METRICS, b"m 2")
        up = Frames()
        up.reader.dataReceived(transport.value())
        self.assertEqual(up.received, [(CHANNEL_ADDED, b"room"), (METRICS, b"m 2")])
        self.assertEqual(worker.dropped, 2)

    def test_supervisor_gone(self) -> None:
        """The pipe's end (the supervisor exited) is the worker's signal to stop."""
        lost: list[bool] = []
        worker = WorkerBus(Router(self.clock), lambda: lost.append(True))
        worker.makeConnection(StringTransport())
        worker.connectionLost()
        self.assertEqual(lost, [True])

    def test_oversized_frame(self) -> None:
        """A frame over MAX_FRAME is refused by its length alone."""
        frames = Frames()
        frames.reader.dataReceived((MAX_FRAME + 1).to_bytes(4, "big") + b"I")
        self.assertEqual((frames.received, frames.too_long), ([], [MAX_FRAME + 1]))


class ChannelUnionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = Router(Clock())
        self.union = ChannelUnion(self.router)
        self.events: list[tuple[str, str]] = []
        self.union.add_channel_listener(self)

    def channel_added(self, channel: str) -> None:
        self.events.append(("+", channel))

    def channel_removed(self, channel: str) -> None:
        self.events.append(("-", channel))

    def test_a_channel_is_held_while_any_router_holds_it(self) -> None:
        """Added when the first router (this one, or a worker's) takes it, removed when the
        last lets it go; a worker that ends lets go of all of its channels."""
        subscriber = RecordingSubscriber()
        self.router.subscribe("a", subscriber)
        self.union.add("worker 0", "a")
        self.union.add("worker 0", "a")  # said twice: still one
        self.union.add("worker 1", "b")
        self.assertEqual(self.union.channels(), frozenset({"a", "b"}))
        self.router.unsubscribe("a", subscriber)
        self.union.remove("worker 1", "nothing")
        self.union.forget("worker 0")
        self.union.forget("worker 1")
        self.assertEqual(self.events, [("+", "a"), ("+", "b"), ("-", "a"), ("-", "b")])
        self.assertEqual(self.union.channels(), frozenset())
