"""transports/http/hold.py over in-memory HTTP connections and a task.Clock: timers, exits,
renderers, slow clients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.grip.instruct import Channel, GripKeepAlive, Instruct, Link, Response
from fanout_tx.transports.http.hold import (
    HeldResponse,
    HeldStream,
    register_renderers,
    render_http_stream,
)
from fanout_tx.transports.http.server_channel import HttpServerFactory
from fanout_tx.transports.write_budget import WriteBudget


class FakeHoldOwner:
    """Records what a hold asks of its proxy session."""

    def __init__(self) -> None:
        self.retries: list[Sequence[tuple[str, str]]] = []
        self.links: list[tuple[Link, Sequence[tuple[str, str]], Deferred[Instruct]]] = []

    def retry(self, grip_last: Sequence[tuple[str, str]] = ()) -> None:
        self.retries.append(grip_last)

    def fetch_link(self, link: Link, grip_last: Sequence[tuple[str, str]]) -> Deferred[Instruct]:
        d: Deferred[Instruct] = Deferred()
        self.links.append((link, grip_last, d))
        return d

    def channel_name(self, name: str) -> str:
        return name


class CountingWrites:
    """Counts the writes a StringTransport receives."""

    def __init__(self, transport: StringTransport) -> None:
        self.count = 0
        write = transport.write

        def counted(data: bytes) -> None:
            self.count += 1
            write(data)

        transport.write = counted  # type: ignore[method-assign]
        transport.writeSequence = lambda seq: counted(b"".join(seq))  # type: ignore[method-assign]


class HoldResource(Resource):
    isLeaf = True

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make
        self.holds: list[Any] = []

    def render(self, request: Request) -> int:
        hold = self.make(request)
        self.holds.append(hold)
        hold.start()
        return NOT_DONE_YET


class HoldTestsMixin:
    clock: task.Clock
    router: Router
    origin: FakeHoldOwner

    def setup_hold(self) -> None:
        self.clock = task.Clock()
        self.router = Router(self.clock)
        register_renderers(self.router)
        self.origin = FakeHoldOwner()

    def connect(self, make: Any) -> tuple[Any, StringTransport, Any]:
        resource = HoldResource(make)
        # served as on the client port; the request deadlines on a clock of their own (these
        # tests count the hold's timers)
        factory = HttpServerFactory(resource, task.Clock(), access_log=False)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        return protocol, transport, resource.holds[0]

    def publish(self, channel: str, **formats: Any) -> None:
        """Publish one item and let the reactor turn end (streams flush their output)."""
        self.router.publish(parse_item({"channel": channel, "formats": {
            k.replace("_", "-"): v for k, v in formats.items()}}))
        self.clock.advance(0)


def long_poll(channels: tuple[str, ...] = ("c",), timeout: int = 30) -> Instruct:
    return Instruct(hold="response", channels=tuple(Channel(c) for c in channels),
                    timeout=timeout, response=Response(200, None, (("X-Held", "1"),), b"late"))


class HeldResponseTests(HoldTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setup_hold()

    def make(self, instruct: Instruct) -> Any:
        return lambda request: HeldResponse(request, self.router, self.clock, instruct,
                                            self.origin)

    def test_provides_subscriber(self) -> None:
        _protocol, _transport, hold = self.connect(self.make(long_poll()))
        verifyObject(ISubscriber, hold)

    def test_publish_answers_and_clears_everything(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(long_poll(("a", "b"))))
        self.assertEqual(self.router.subscription_count(), 2)
        self.publish("b", http_response={"body": "hi", "headers": {"X-Pub": "2"}})
        value = transport.value()
        self.assertIn(b"HTTP/1.1 200 OK", value)
        self.assertIn(b"X-Held: 1", value)
        self.assertIn(b"X-Pub: 2", value)
        self.assertTrue(value.endswith(b"\r\n\r\nhi"))
        self.assertEqual(self.router.subscription_count(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(long_poll(timeout=30)))
        self.clock.advance(29.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertTrue(transport.value().endswith(b"late"))
        self.assertEqual(self.router.subscriber_count(), 0)

    def test_client_gone(self) -> None:
        """Connection loss unsubscribes at once and cancels the timeout."""
        protocol, _transport, _hold = self.connect(self.make(long_poll()))
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hint_and_recover_ask_the_origin_again(self) -> None:
        _protocol, transport, hold = self.connect(self.make(long_poll()))
        self.publish("c", http_response={"action": "hint"})
        self.assertEqual(self.origin.retries, [[]])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.router.subscriber_count(), 0)
        hold.recover()  # already ended: nothing more
        self.assertEqual(len(self.origin.retries), 1)

    def test_shutdown_answers_like_a_timeout(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(long_poll()))
        self.router.close_all("shutdown")
        self.assertTrue(transport.value().endswith(b"late"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


def stream(keep_alive: GripKeepAlive | None = None, link: Link | None = None,
           prev_id: str | None = None) -> Instruct:
    return Instruct(hold="stream", channels=(Channel("c", prev_id),), keep_alive=keep_alive,
                    next_link=link, response=Response(200, None, (), b"hello\n"))


class HeldStreamTests(HoldTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setup_hold()

    def make(self, instruct: Instruct, max_buffer: int = 1_000_000) -> Any:
        return lambda request: HeldStream(request, self.router, self.clock, instruct,
                                          self.origin, max_buffer)

    def test_initial_body_then_prepared_chunks(self) -> None:
        """The chunk framing comes from the renderer, built once per item."""
        calls: list[Format] = []

        def counting(fmt: Format) -> Any:
            calls.append(fmt)
            return render_http_stream(fmt)

        self.router.add_renderer("http-stream", counting)
        transports = [self.connect(self.make(stream()))[1] for _ in range(3)]
        self.publish("c", http_stream={"content": "data"})
        self.assertEqual(len(calls), 1)
        for transport in transports:
            self.assertTrue(transport.value().endswith(b"6\r\nhello\n\r\n4\r\ndata\r\n"))

    def test_items_of_one_turn_go_out_in_one_write(self) -> None:
        """Write coalescing: everything published in one reactor turn reaches each client
        in a single transport write, in order, on the next turn."""
        _protocol, transport, _hold = self.connect(self.make(stream()))
        writes = CountingWrites(transport)
        for content in ("a", "bb", "c"):
            self.router.publish(parse_item({"channel": "c", "formats": {
                "http-stream": {"content": content}}}))
        self.assertEqual(writes.count, 0)
        self.clock.advance(0)
        self.assertEqual(writes.count, 1)
        self.assertTrue(transport.value().endswith(b"1\r\na\r\n2\r\nbb\r\n1\r\nc\r\n"))

    def test_close_flushes_what_was_queued_first(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(stream()))
        self.router.publish(parse_item({"channel": "c", "formats": {
            "http-stream": {"content": "last"}}}))
        self.publish("c", http_stream={"action": "close"})
        self.assertTrue(transport.value().endswith(b"4\r\nlast\r\n0\r\n\r\n"))

    def test_close_action_ends_the_response(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(stream(GripKeepAlive(b"k", 10))))
        self.publish("c", http_stream={"action": "close"})
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keep_alive_idle_restarts_on_write(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(stream(GripKeepAlive(b"ka", 10))))
        self.clock.advance(9)
        self.publish("c", http_stream={"content": "x"})
        self.clock.advance(9)
        self.assertFalse(transport.value().endswith(b"ka\r\n"))
        self.clock.advance(1)
        self.assertTrue(transport.value().endswith(b"2\r\nka\r\n"))
        self.clock.advance(10)
        self.assertEqual(transport.value().count(b"ka"), 2)

    def test_client_gone_cancels_keep_alive_and_link_timers(self) -> None:
        instruct = stream(GripKeepAlive(b"k", 10), Link("/next", 30), prev_id="1")
        protocol, _transport, _hold = self.connect(self.make(instruct))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.router.subscriber_count(), 0)

    def test_slow_client_is_dropped_past_the_limit(self) -> None:
        """While the client transport is full, at most max_buffer bytes are queued; then the
        client is dropped. Another stream on the channel is unaffected."""
        _slow_protocol, slow, _hold = self.connect(self.make(stream(), max_buffer=100))
        _fast_protocol, fast, _other = self.connect(self.make(stream(), max_buffer=100))
        slow.producer.pauseProducing()  # what the transport does when its buffer is full
        self.publish("c", http_stream={"content": "x" * 60})
        self.assertFalse(slow.disconnecting)
        self.publish("c", http_stream={"content": "y" * 60})
        self.assertTrue(slow.disconnecting)
        self.assertEqual(self.router.subscriber_count(), 1)
        self.publish("c", http_stream={"content": "z"})
        self.assertTrue(fast.value().endswith(b"1\r\nz\r\n"))

    def test_resume_resets_the_budget(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(stream(), max_buffer=100))
        for _ in range(5):
            transport.producer.pauseProducing()
            self.publish("c", http_stream={"content": "x" * 60})
            transport.producer.resumeProducing()
        self.assertFalse(transport.disconnecting)

    def test_a_stream_that_ends_behind_leaves_the_budget(self) -> None:
        """A client that goes away while its socket is full no longer counts against
        ``max_buffered_bytes`` (nor stays referenced by the budget)."""
        budget = WriteBudget(self.clock)
        protocol, transport, _hold = self.connect(
            lambda request: HeldStream(request, self.router, self.clock, stream(),
                                       self.origin, budget=budget))
        transport.producer.pauseProducing()
        self.publish("c", http_stream={"content": "x" * 60})
        self.assertEqual(budget.total, 60)
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(budget.total, 0)

    def test_resume_keeps_the_idle_timers(self) -> None:
        """A pause and resume of the client is not idleness: the keep-alive and the
        Grip-Link timer still count from the last write and the last item."""
        instruct = stream(GripKeepAlive(b"ka", 10), Link("/next", 30))
        _protocol, transport, _hold = self.connect(self.make(instruct))
        self.clock.advance(9)
        self.publish("c", http_stream={"content": "x"})
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.clock.advance(9)  # the keep-alive timer fires 10 s after the start
        self.assertFalse(transport.value().endswith(b"ka\r\n"))
        self.clock.advance(20)  # the link timer fired at 30 s and sleeps until 39 s
        self.assertEqual(self.origin.links, [])
        self.clock.advance(1)
        self.assertEqual(len(self.origin.links), 1)

    def test_gap_recovery_splices_each_item_once(self) -> None:
        _protocol, transport, _hold = self.connect(self.make(stream(link=Link("/n", 60),
                                                                    prev_id="1")))
        item = {"channel": "c", "formats": {"http-stream": {"content": ""}}}

        def publish(item_id: str, prev: str) -> None:
            self.router.publish(parse_item({**item, "id": item_id, "prev-id": prev,
                                            "no-seq": True,
                                            "formats": {"http-stream": {"content": item_id}}}))

        publish("2", "1")
        publish("4", "3")  # gap: 3 is missing
        publish("5", "4")
        [(link, grip_last, d)] = self.origin.links
        self.assertEqual(grip_last, [("Grip-Last", "c; last-id=2")])
        d.callback(Instruct(hold="stream", channels=(Channel("c", "4"),), next_link=link,
                            response=Response(body=b"34")))
        self.clock.advance(0)
        self.assertTrue(transport.value().endswith(b"1\r\n2\r\n2\r\n34\r\n1\r\n5\r\n"))

    def test_link_that_raises_delivers_what_was_queued(self) -> None:
        """A recovery request that fails before it is sent does not leave the stream
        queueing forever: later items are delivered."""
        _protocol, transport, hold = self.connect(self.make(stream(link=Link("/n", 60))))

        def broken(_link: Link, _grip_last: object) -> Deferred[Instruct]:
            raise ValueError("not an http(s) URL")

        self.origin.fetch_link = broken  # type: ignore[method-assign]
        hold.recover()
        self.publish("c", http_stream={"content": "q"})
        self.clock.advance(0)
        self.assertTrue(transport.value().endswith(b"1\r\nq\r\n"))

    def test_link_failure_delivers_what_was_queued(self) -> None:
        _protocol, transport, hold = self.connect(self.make(stream(link=Link("/n", 60))))
        hold.recover()
        self.publish("c", http_stream={"content": "q"})
        self.origin.links[0][2].errback(ConnectionError("origin down"))
        self.clock.advance(0)
        self.assertTrue(transport.value().endswith(b"1\r\nq\r\n"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the link timer again


class PrefixingOrigin(FakeHoldOwner):
    """A route with ``prefix=p-``: the router knows channel ``a`` as ``p-a``."""

    def channel_name(self, name: str) -> str:
        return "p-" + name


def build_id_stream(body: bytes = b"start %(x)I %%\n", link: Link | None = None,
                    id_format: str = "%(a)s_%(b)s") -> Instruct:
    return Instruct(hold="stream", channels=(Channel("a", "1", ("build-id",)),
                                             Channel("b", "7", ("build-id",)),
                                             Channel("c", None, ("build-id",))),
                    next_link=link, meta={"id_format": id_format},
                    response=Response(200, None, (), body))


class BuildIdHoldTests(HoldTestsMixin, SynchronousTestCase):
    """build-id as Pushpin 1.36 does it on holds: the prev ids of the hold's channels (as
    the origin named them), advanced by each item before it is rendered."""

    def setUp(self) -> None:
        self.setup_hold()
        self.origin = PrefixingOrigin()

    def open_stream(self, instruct: Instruct) -> tuple[StringTransport, Any]:
        _protocol, transport, hold = self.connect(
            lambda request: HeldStream(request, self.router, self.clock, instruct, self.origin))
        return transport, hold

    def publish_id(self, channel: str, item_id: str, prev_id: str | None,
                   content: str = "id: %I\n") -> None:
        item = {"channel": channel, "id": item_id,
                "formats": {"http-stream": {"content": content}}}
        if prev_id is not None:
            item["prev-id"] = prev_id
        self.router.publish(parse_item(item))
        self.clock.advance(0)

    def test_stream_ids_advance(self) -> None:
        transport, hold = self.open_stream(build_id_stream())
        self.publish_id("p-a", "2", "1")
        self.publish_id("p-b", "8", "7")
        self.publish_id("p-c", "x", None)  # no prev-id on c: it stays unknown
        self.publish_id("p-a", "3", "2")
        self.assertTrue(transport.value().endswith(
            b"\r\n\r\na\r\nstart x %\n\r\n8\r\nid: 2_7\n\r\n8\r\nid: 2_8\n\r\n"
            b"8\r\nid: 2_8\n\r\n8\r\nid: 3_8\n\r\n"))
        self.assertEqual(hold.prev_ids(parse_item({"channel": "p-b", "id": "9", "formats": {
            "http-stream": {"content": ""}}})), {"a": "3", "b": "9", "c": None})

    def test_bare_id_in_the_origin_body_ends_the_stream(self) -> None:
        """Pushpin 1.36: the origin's body is filtered with no prev ids, so %I there is an
        error: the head goes out, the response ends, nothing is subscribed."""
        transport, hold = self.open_stream(build_id_stream(body=b"id: %I\n"))
        value = transport.value()
        self.assertIn(b"HTTP/1.1 200 OK", value)
        self.assertTrue(value.endswith(b"\r\n\r\n0\r\n\r\n"))
        self.assertNotIn(b"id:", value)
        self.assertTrue(hold.ended)
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_recovery_answer_is_filtered_with_its_own_meta(self) -> None:
        """A Grip-Link answer's body goes through build-id too; its meta and prev ids
        replace the old ones."""
        transport, hold = self.open_stream(build_id_stream(link=Link("/n", 60)))
        hold.recover()
        [(link, grip_last, d)] = self.origin.links
        self.assertEqual(grip_last, [("Grip-Last", "a; last-id=1"), ("Grip-Last", "b; last-id=7")])
        d.callback(Instruct(hold="stream", channels=(Channel("a", "5", ("build-id",)),),
                            next_link=link, meta={"id_format": "A%(a)s"},
                            response=Response(body=b"again %(y)I\n")))
        self.publish_id("p-a", "6", "5")
        self.assertTrue(transport.value().endswith(b"8\r\nagain y\n\r\n7\r\nid: A6\n\r\n"))

    def test_bad_recovery_answer_ends_the_stream(self) -> None:
        transport, hold = self.open_stream(build_id_stream(link=Link("/n", 60)))
        hold.recover()
        self.origin.links[0][2].callback(Instruct(
            hold="stream", channels=(Channel("a", "5", ("build-id",)),), next_link=Link("/n", 60),
            meta={"id_format": "%(a)s"}, response=Response(body=b"%I")))
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_long_poll(self) -> None:
        """Pushpin 1.36: the published body gets the id with the item counted (2-5); the
        timeout response is not filtered."""
        instruct = Instruct(hold="response", channels=(Channel("a", "1", ("build-id",)),
                                                       Channel("b", "5", ("build-id",))),
                            meta={"id_format": "%(a)s-%(b)s"},
                            response=Response(200, None, (), b"late %I"))
        _protocol, transport, _hold = self.connect(
            lambda request: HeldResponse(request, self.router, self.clock, instruct,
                                         self.origin))
        self.router.publish(parse_item({"channel": "p-a", "id": "2", "prev-id": "1",
                                        "formats": {"http-response": {"body": "id=%I"}}}))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nid=2-5"))
        _protocol, transport, _hold = self.connect(
            lambda request: HeldResponse(request, self.router, self.clock, instruct,
                                         self.origin))
        self.clock.advance(instruct.timeout)
        self.assertTrue(transport.value().endswith(b"late %I"))
