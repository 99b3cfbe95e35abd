"""ZeroMQ PULL and SUB inputs against real pyzmq PUSH / PUB / XPUB peers on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import zmq
from gripcontrol import HttpStreamFormat
from pubcontrol import Item as PubControlItem
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from fanout_tx.core.bus import BusUnavailableError, LocalBus
from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.router import Router
from fanout_tx.inputs.zmq_ingest import DRAIN_BATCH, ZmqPullInput, ZmqSubInput
from fanout_tx.ops.startup import StartupError
from tests.support.helpers import RecordingBus, RecordingSubscriber, wait_until

try:  # twisted >= 22.8 keeps it here
    from twisted.internet.testing import EventLoggingObserver
except ImportError:  # pragma: no cover
    from twisted.test.proto_helpers import EventLoggingObserver  # type: ignore[no-redef]

ANY_PORT = "tcp://127.0.0.1:*"


def stream_item(content: str, channel: str | None = "ch", item_id: str | None = None
                ) -> dict[str, Any]:
    item: dict[str, Any] = {"formats": {"http-stream": {"content": content}}}
    if channel is not None:
        item["channel"] = channel
    if item_id is not None:
        item["id"] = item_id
    return item


def as_json(obj: Any) -> bytes:
    return b"J" + json.dumps(obj).encode()


class _ZmqTestMixin:
    """A real Router and LocalBus, one recording subscriber on ``ch``, peer socket helpers."""

    def setUp(self) -> None:
        self.context = zmq.Context.instance()
        self.router = Router(reactor)
        self.bus = LocalBus(self.router)
        self.subscriber = RecordingSubscriber()
        self.router.subscribe("ch", self.subscriber)
        self.warnings = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def peer(self, socket_type: int) -> zmq.Socket:
        sock = self.context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        self.addCleanup(sock.close)
        return sock

    def started(self, service: Any) -> Any:
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def drop_reasons(self) -> list[str]:
        return [e["reason"] for e in self.warnings if "dropped a message" in e["log_format"]]


class PullInputTests(_ZmqTestMixin, TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.pull = self.started(
            ZmqPullInput(reactor, self.context, self.bus, ANY_PORT))
        self.push = self.peer(zmq.PUSH)
        self.push.connect(self.pull.endpoints[0])

    def test_bound_endpoint_is_exposed(self) -> None:
        """Binding tcp://127.0.0.1:* reports the real port through ``endpoints``."""
        [endpoint] = self.pull.endpoints
        self.assertTrue(endpoint.startswith("tcp://127.0.0.1:"))
        self.assertNotEqual(endpoint, ANY_PORT)

    async def test_three_encodings(self) -> None:
        """tnetstring, T+tnetstring and J+JSON messages each publish one item."""
        self.push.send(tnetstring.dumps(stream_item("plain")))
        self.push.send(b"T" + tnetstring.dumps(stream_item("tagged")))
        self.push.send(as_json(stream_item("json")))
        await wait_until(lambda: len(self.subscriber.received) == 3)
        self.assertEqual(self.subscriber.contents, [b"plain", b"tagged", b"json"])
        self.assertEqual(self.router.deliveries["http-stream"], 3)

    async def test_pubcontrol_item(self) -> None:
        """A message built the way PyPI pubcontrol's ZMQ client builds it (gripcontrol
        formats, ``export(True, True)`` plus the channel, as tnetstring) is understood."""
        exported = PubControlItem([HttpStreamFormat(b"\x00bin")], id="1",
                                  meta={"sender": "me"}).export(True, True)
        exported[b"channel"] = b"ch"
        self.push.send(tnetstring.dumps(exported))
        await wait_until(lambda: self.subscriber.received)
        item, fmt, _prepared = self.subscriber.received[0]
        self.assertEqual((fmt.content, item.id, item.meta), (b"\x00bin", "1", {"sender": "me"}))

    async def test_bad_messages_are_logged_and_dropped(self) -> None:
        """Multi-part, unparsable and invalid messages are each logged with a reason; the
        next good message still arrives."""
        self.push.send_multipart([as_json(stream_item("a")), as_json(stream_item("b"))])
        self.push.send(b"not a tnetstring")
        self.push.send(b"J{not json")
        self.push.send(as_json({"channel": "ch"}))
        self.push.send(b"")
        self.push.send(as_json(stream_item("good")))
        await wait_until(lambda: self.subscriber.received)
        self.assertEqual(self.subscriber.contents, [b"good"])
        reasons = self.drop_reasons()
        self.assertEqual(len(reasons), 5, reasons)
        self.assertIn("single-part", reasons[0])
        self.assertIn("tnetstring", reasons[1])
        self.assertIn("JSON", reasons[2])
        self.assertIn("no formats", reasons[3])
        self.assertIn("tnetstring", reasons[4])
        self.assertEqual(self.pull.rejected, 5)
        self.assertTrue(all(e["input"] == "zmq-pull" for e in self.warnings
                            if "dropped a message" in e["log_format"]))

    async def test_more_than_one_batch(self) -> None:
        """More messages than one drain handles are all read: the input reschedules itself
        instead of waiting for a readiness the edge-triggered FD will not repeat."""
        count = DRAIN_BATCH * 2 + 10
        for n in range(count):
            self.push.send(as_json(stream_item(str(n))))
        await wait_until(lambda: len(self.subscriber.received) == count)
        self.assertEqual(self.subscriber.contents[-1], str(count - 1).encode())

    async def test_stop_and_start_again(self) -> None:
        """stopService removes the reader and closes the socket; the service can start
        again and reads on its new endpoint."""
        self.pull.stopService()
        self.assertNotIn(self.pull, reactor.getReaders())
        self.assertEqual(self.pull.fileno(), -1)
        self.started(self.pull)
        self.assertIn(self.pull, reactor.getReaders())
        push = self.peer(zmq.PUSH)
        push.connect(self.pull.endpoints[0])
        push.send(as_json(stream_item("again")))
        await wait_until(lambda: self.subscriber.received)
        self.assertEqual(self.subscriber.contents, [b"again"])

    def test_ipc_folder_is_created(self) -> None:
        """An ipc:// endpoint in a folder that does not exist yet: the folder is made (as
        Pushpin's runner makes its rundir) and the socket reads."""
        top = tempfile.mkdtemp()  # short: a unix socket path is limited to ~107 bytes
        self.addCleanup(shutil.rmtree, top)
        folder = Path(top) / "run"
        pull = self.started(ZmqPullInput(reactor, self.context, self.bus,
                                         f"ipc://{folder}/pushpin-in"))
        self.assertTrue(folder.is_dir())
        self.assertEqual(pull.endpoints, [f"ipc://{folder}/pushpin-in"])

    def test_bind_failure_stops_start_up(self) -> None:
        """A spec that cannot be bound raises StartupError naming the input, the spec and
        the reason (ops/startup.py ends the process); nothing is read."""
        broken = ZmqPullInput(reactor, self.context, self.bus, "bogus://x")
        error = self.assertRaises(StartupError, broken.startService)
        self.assertEqual(str(error), "zmq-pull cannot open bogus://x: Protocol not supported")
        self.assertEqual(broken.endpoints, [])
        self.assertNotIn(broken, reactor.getReaders())


class PublishFailureTests(_ZmqTestMixin, TestCase):
    """What the bus says after a valid message never reaches the socket loop."""

    async def send_through(self, bus: RecordingBus) -> None:
        pull = self.started(ZmqPullInput(reactor, self.context, bus, ANY_PORT))
        push = self.peer(zmq.PUSH)
        push.connect(pull.endpoints[0])
        push.send(as_json(stream_item("a")))
        await wait_until(lambda: any(e.get("channel") == "ch" and e.get("input") == "zmq-pull"
                                     for e in self.warnings))

    async def test_bus_unavailable_is_one_warning(self) -> None:
        """Redis away (BusUnavailableError): a warning naming the channel, no traceback."""
        await self.send_through(RecordingBus(BusUnavailableError("redis is down")))
        [event] = [e for e in self.warnings if "reached local" in e["log_format"]]
        self.assertEqual((event["channel"], event["reason"]), ("ch", "redis is down"))

    async def test_other_bus_failures_are_logged_with_traceback(self) -> None:
        await self.send_through(RecordingBus(RuntimeError("boom")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SubInputTests(_ZmqTestMixin, TestCase):
    async def publish_until_delivered(self, pub: zmq.Socket, parts: list[bytes]) -> None:
        """A plain PUB cannot tell when the subscription has arrived (slow joiner), so
        resend an item with a fixed id until it lands; the router's id cache keeps one."""

        def delivered() -> bool:
            if not self.subscriber.received:
                pub.send_multipart(parts)
            return bool(self.subscriber.received)

        await wait_until(delivered)

    async def test_bound_sub_with_several_specs(self) -> None:
        """With push_in_sub_connect false the SUB socket binds every spec; PUB peers that
        connect to any of them are heard, channel taken from the first part."""
        sub = self.started(ZmqSubInput(reactor, self.context, self.bus, self.router,
                                       [ANY_PORT, ANY_PORT]))
        self.assertEqual(len(set(sub.endpoints)), 2)
        for n, endpoint in enumerate(sub.endpoints):
            pub = self.peer(zmq.PUB)
            pub.connect(endpoint)
            await self.publish_until_delivered(
                pub, [b"ch", as_json(stream_item(f"via {n}", channel=None, item_id=str(n)))])
            self.assertEqual(self.subscriber.contents, [f"via {n}".encode()])
            self.assertEqual(self.subscriber.received[0][0].channel, "ch")
            self.subscriber.received.clear()

    async def test_connecting_sub(self) -> None:
        """With push_in_sub_connect true the SUB socket connects to a bound PUB; tnetstring
        payloads work too."""
        pub = self.peer(zmq.PUB)
        pub.bind(ANY_PORT)
        endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        sub = self.started(ZmqSubInput(reactor, self.context, self.bus, self.router,
                                       [endpoint], connect=True))
        self.assertEqual(sub.endpoints, [endpoint])
        payload = tnetstring.dumps({"id": "1", "formats": {"http-stream": {"content": "t"}}})
        await self.publish_until_delivered(pub, [b"ch", payload])
        self.assertEqual(self.subscriber.contents, [b"t"])


class XpubPeerTests(_ZmqTestMixin, TestCase):
    """An XPUB publisher sees exactly the channels that have local subscribers; here the
    SUB input connects (push_in_sub_connect=true) to the bound XPUB."""

    connect = True

    def setUp(self) -> None:
        super().setUp()
        self.xpub = self.peer(zmq.XPUB)
        spec = ANY_PORT
        if self.connect:
            self.xpub.bind(ANY_PORT)
            spec = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = ZmqSubInput(reactor, self.context, self.bus, self.router, [spec],
                               connect=self.connect, linger=0.1)

    def start(self) -> None:
        self.started(self.sub)
        if not self.connect:
            self.xpub.connect(self.sub.endpoints[0])

    async def next_subscription(self) -> bytes:
        received: list[bytes] = []

        def arrived() -> bool:
            if self.xpub.poll(0, zmq.POLLIN):
                received.append(self.xpub.recv())
            return bool(received)

        await wait_until(arrived)
        return received[0]

    async def test_subscribe_and_unsubscribe_follow_the_router(self) -> None:
        """Channels subscribed before start are sent on connect; a channel gaining its first
        subscriber sends \\x01name, losing its last sends \\x00name."""
        self.start()
        self.assertEqual(await self.next_subscription(), b"\x01ch")
        other = RecordingSubscriber()
        self.router.subscribe("news", other)
        self.assertEqual(await self.next_subscription(), b"\x01news")
        self.router.subscribe("news", RecordingSubscriber())  # not the first: no message
        self.router.unsubscribe_all(self.subscriber)
        self.assertEqual(await self.next_subscription(), b"\x00ch")

    async def test_items_after_subscription_and_garbage(self) -> None:
        """Once the XPUB saw the subscription, items arrive; wrong part counts, non-UTF-8
        channels and bad payloads are logged and dropped without stopping the socket."""
        self.start()
        self.assertEqual(await self.next_subscription(), b"\x01ch")
        self.xpub.send(b"ch-alone")
        self.xpub.send_multipart([b"ch", b"J{}", b"extra"])
        self.xpub.send_multipart([b"ch\xff", as_json(stream_item("x", channel=None))])
        self.xpub.send_multipart([b"ch", b"garbage"])
        self.xpub.send_multipart([b"ch", as_json({"formats": "nope"})])
        self.xpub.send_multipart([b"ch", as_json(stream_item("good", channel=None))])
        await wait_until(lambda: self.subscriber.received)
        self.assertEqual(self.subscriber.contents, [b"good"])
        reasons = self.drop_reasons()
        self.assertEqual(len(reasons), 5, reasons)
        self.assertIn("got 1 parts", reasons[0])
        self.assertIn("got 3 parts", reasons[1])
        self.assertIn("UTF-8", reasons[2])
        self.assertIn("tnetstring", reasons[3])
        self.assertIn("formats must be an object", reasons[4])
        self.assertEqual(self.sub.rejected, 5)


class BoundSubXpubPeerTests(XpubPeerTests):
    """The same with the SUB input bound and the XPUB publisher connecting to it."""

    connect = False
