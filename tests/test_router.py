"""Router logic on a deterministic clock: subscriptions, rendering, de-duplication,
sequencing, filters, failures and channel listeners."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import IChannelListener, ISubscriber
from fanout_tx.core.items import Item, parse_item
from fanout_tx.core.router import FilterError, Router
from fanout_tx.grip.content_filters import substitute_vars
from tests.support.helpers import RecordingSubscriber

try:
    from twisted.internet.testing import EventLoggingObserver
except ImportError:  # pragma: no cover
    from twisted.test.proto_helpers import EventLoggingObserver  # type: ignore[no-redef]


def item(content: str = "x", channel: str = "ch", **extra: Any) -> Item:
    """An item with one ``http-stream`` format plus any item-level keys (``id``, ...)."""
    obj = {"channel": channel, "formats": {"http-stream": {"content": content}}}
    obj.update({k.replace("_", "-"): v for k, v in extra.items()})
    return parse_item(obj)


@implementer(IChannelListener)
class RecordingListener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def channel_added(self, channel: str) -> None:
        self.events.append(("added", channel))

    def channel_removed(self, channel: str) -> None:
        self.events.append(("removed", channel))


class _RouterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(self.clock, message_wait=5.0, id_cache_ttl=60.0)

    def subscriber(self, channel: str = "ch", filters: tuple[str, ...] = (),
                   **kwargs: Any) -> RecordingSubscriber:
        sub = RecordingSubscriber(**kwargs)
        self.router.subscribe(channel, sub, filters)
        return sub


class FakeTests(SynchronousTestCase):
    def test_recording_subscriber_provides_isubscriber(self) -> None:
        """The shared fake implements the whole subscriber interface."""
        self.assertTrue(verifyObject(ISubscriber, RecordingSubscriber()))
        self.assertTrue(verifyObject(IChannelListener, RecordingListener()))


class SubscriptionTests(_RouterTestCase):
    def test_subscribe_and_publish(self) -> None:
        """A subscriber gets the items of its channel and nothing of other channels."""
        sub = self.subscriber()
        self.router.publish(item("a"))
        self.router.publish(item("b", channel="other"))
        self.assertEqual(sub.contents, [b"a"])
        self.assertEqual(self.router.channels(), frozenset({"ch"}))
        self.assertEqual(self.router.deliveries["http-stream"], 1)

    def test_subscribe_is_idempotent(self) -> None:
        """Subscribing twice delivers once; the second call replaces the filters."""
        sub = self.subscriber()
        self.router.subscribe("ch", sub, ["skip-self"])
        self.router.publish(item())
        self.assertEqual(len(sub.received), 1)
        self.assertEqual(self.router.subscription_count(), 1)

    def test_unsubscribe(self) -> None:
        """After unsubscribe nothing more arrives and the empty channel is gone; unknown
        unsubscribes are harmless."""
        sub = self.subscriber()
        self.router.unsubscribe("ch", sub)
        self.router.unsubscribe("ch", sub)
        self.router.unsubscribe("nope", RecordingSubscriber())
        self.router.publish(item())
        self.assertEqual(sub.received, [])
        self.assertFalse(self.router.has_subscribers("ch"))
        self.assertEqual(self.router.subscriber_count(), 0)

    def test_unsubscribe_all(self) -> None:
        """unsubscribe_all ends every subscription of one subscriber, not the others'."""
        sub = self.subscriber("a")
        self.router.subscribe("b", sub)
        other = self.subscriber("b")
        self.assertEqual(self.router.channels_of(sub), frozenset({"a", "b"}))
        self.router.unsubscribe_all(sub)
        self.assertEqual(self.router.channels_of(sub), frozenset())
        self.assertEqual(self.router.channels(), frozenset({"b"}))
        self.router.publish(item(channel="b"))
        self.assertEqual(len(other.received), 1)
        self.assertEqual(sub.received, [])

    def test_counts_and_recover_and_close(self) -> None:
        """Counters, recover_all and close_all reach every subscriber once."""
        first = self.subscriber("a")
        self.router.subscribe("b", first)
        second = self.subscriber("b")
        self.assertEqual(self.router.subscriber_count(), 2)
        self.assertEqual(self.router.subscription_count(), 3)
        self.assertEqual(self.router.recover_all(), 2)
        self.router.close_all("shutdown")
        self.assertEqual((first.recovered, second.recovered), (1, 1))
        self.assertEqual((first.closed, second.closed), (["shutdown"], ["shutdown"]))


class FormatTests(_RouterTestCase):
    def multi_format_item(self) -> Item:
        return parse_item({"channel": "ch", "formats": {
            "http-stream": {"content": "s"},
            "ws-message": {"content": "w"},
            "http-response": {"body": "r"},
        }})

    def test_subscribers_get_only_their_formats(self) -> None:
        """Each subscriber gets the item in the format its transport takes; a subscriber
        whose format the item lacks gets nothing."""
        stream = self.subscriber(formats=("http-stream",))
        ws = self.subscriber(formats=("ws-message",))
        self.router.publish(self.multi_format_item())
        self.assertEqual([f.name for _i, f, _p in stream.received], ["http-stream"])
        self.assertEqual([f.name for _i, f, _p in ws.received], ["ws-message"])
        self.router.publish(item("only-stream"))
        self.assertEqual(len(ws.received), 1)

    def test_multi_format_subscriber_gets_the_item_once(self) -> None:
        """A subscriber that takes several formats gets each item once."""
        sub = self.subscriber(formats=("ws-message", "http-stream"))
        self.router.publish(self.multi_format_item())
        self.assertEqual(len(sub.received), 1)
        self.router.publish(item("stream only"))
        self.assertEqual(len(sub.received), 2)

    def test_renderer_runs_once_per_item_and_format(self) -> None:
        """N subscribers share one rendering per format."""
        calls: list[Format] = []

        def render(fmt: Format) -> bytes:
            calls.append(fmt)
            return b"prepared:" + (fmt.content or b"")

        self.router.add_renderer("http-stream", render)
        subs = [self.subscriber() for _ in range(50)]
        self.router.publish(item("a"))
        self.router.publish(item("b"))
        self.assertEqual([f.content for f in calls], [b"a", b"b"])
        self.assertTrue(all(s.received[1][2] == b"prepared:b" for s in subs))
        self.assertIs(subs[0].received[0][2], subs[49].received[0][2])
        self.assertEqual(self.router.deliveries["http-stream"], 100)

    def test_without_renderer_the_format_is_prepared(self) -> None:
        sub = self.subscriber()
        self.router.publish(item("a"))
        _item, fmt, prepared = sub.received[0]
        self.assertIs(fmt, prepared)


class DeduplicationTests(_RouterTestCase):
    def test_duplicate_id_dropped_within_ttl(self) -> None:
        """The same id on the same channel within id_cache_ttl goes out once; other
        channels and items without id are not affected."""
        sub = self.subscriber()
        other = self.subscriber("other")
        self.router.publish(item("1", id="a"))
        self.clock.advance(59)
        self.router.publish(item("2", id="a"))
        self.router.publish(item("3", channel="other", id="a"))
        self.router.publish(item("4"))
        self.router.publish(item("5"))
        self.assertEqual(sub.contents, [b"1", b"4", b"5"])
        self.assertEqual(other.contents, [b"3"])

    def test_id_accepted_again_after_ttl(self) -> None:
        sub = self.subscriber()
        self.router.publish(item("1", id="a"))
        self.clock.advance(60)
        self.router.publish(item("2", id="a"))
        self.assertEqual(sub.contents, [b"1", b"2"])

    def test_cache_bounded_by_count(self) -> None:
        """Within the TTL the cache keeps at most id_cache_max ids, the oldest forgotten
        first: a flood of unique ids cannot grow it without bound."""
        self.router = Router(self.clock, id_cache_ttl=60.0, id_cache_max=3)
        sub = self.subscriber()
        for n in range(5):
            self.router.publish(item(str(n), id=str(n)))
        for n in (4, 3, 2, 1, 0):  # 2, 3 and 4 are remembered; 0 and 1 were forgotten
            self.router.publish(item(f"again {n}", id=str(n)))
        self.assertEqual(sub.contents[5:], [b"again 1", b"again 0"])


class SequencingTests(_RouterTestCase):
    def test_held_until_predecessor_arrives(self) -> None:
        """An item whose prev-id is not the channel's last id waits; when the predecessor
        arrives both go out in order and the timer is cancelled."""
        sub = self.subscriber()
        self.router.publish(item("1", id="1"))
        self.router.publish(item("3", id="3", prev_id="2"))
        self.assertEqual(sub.contents, [b"1"])
        self.router.publish(item("2", id="2", prev_id="1"))
        self.assertEqual(sub.contents, [b"1", b"2", b"3"])
        self.assertEqual(self.router.last_id("ch"), "3")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_chain_released_in_order(self) -> None:
        """Several held items are released as one chain, whatever order they came in."""
        sub = self.subscriber()
        self.router.set_last_id("ch", "1")
        self.router.publish(item("4", id="4", prev_id="3"))
        self.router.publish(item("3", id="3", prev_id="2"))
        self.router.publish(item("2", id="2", prev_id="1"))
        self.assertEqual(sub.contents, [b"2", b"3", b"4"])

    def test_released_after_message_wait(self) -> None:
        """A held item goes out after message_wait even if its predecessor never comes,
        and releases the item that was waiting for it."""
        sub = self.subscriber()
        self.router.set_last_id("ch", "1")
        self.router.publish(item("3", id="3", prev_id="2"))
        self.router.publish(item("4", id="4", prev_id="3"))
        self.clock.advance(4.9)
        self.assertEqual(sub.contents, [])
        self.clock.advance(0.1)
        self.assertEqual(sub.contents, [b"3", b"4"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_hold_without_subscribers(self) -> None:
        """With no subscriber on the channel nothing is held (nothing would be waited for)."""
        self.router.set_last_id("ch", "1")
        self.router.publish(item("3", id="3", prev_id="2"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.router.last_id("ch"), "3")

    def test_no_seq_skips_sequencing(self) -> None:
        sub = self.subscriber()
        self.router.set_last_id("ch", "1")
        self.router.publish(item("3", id="3", prev_id="2", no_seq=True))
        self.assertEqual(sub.contents, [b"3"])

    def test_unknown_last_id_does_not_hold(self) -> None:
        """A channel with no known last id delivers at once."""
        sub = self.subscriber()
        self.router.publish(item("3", id="3", prev_id="2"))
        self.assertEqual(sub.contents, [b"3"])

    def test_at_most_100_held_per_channel(self) -> None:
        """Past the cap of 100 held items, further out-of-order items go out at once."""
        sub = self.subscriber()
        self.router.set_last_id("ch", "0")
        for n in range(100):
            self.router.publish(item(f"h{n}", id=f"h{n}", prev_id="missing"))
        self.assertEqual(sub.contents, [])
        self.router.publish(item("over", id="over", prev_id="missing"))
        self.assertEqual(sub.contents, [b"over"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 100)
        self.clock.advance(5)
        self.assertEqual(len(sub.received), 101)

    def test_channel_emptied_drops_held_items(self) -> None:
        """When the last subscriber leaves, held items and their timers go too."""
        sub = self.subscriber()
        self.router.set_last_id("ch", "1")
        self.router.publish(item("3", id="3", prev_id="2"))
        self.router.unsubscribe("ch", sub)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FilterTests(_RouterTestCase):
    def test_skip_self(self) -> None:
        """skip-self: a subscription whose meta user is the publish sender gets nothing."""
        alice = self.subscriber(filters=("skip-self",), meta={"user": "alice"})
        bob = self.subscriber(filters=("skip-self",), meta={"user": "bob"})
        unfiltered = self.subscriber(meta={"user": "alice"})
        self.router.publish(item(meta={"sender": "alice"}))
        self.assertEqual((len(alice.received), len(bob.received), len(unfiltered.received)),
                         (0, 1, 1))

    def test_skip_users(self) -> None:
        subs = {name: self.subscriber(filters=("skip-users",), meta={"user": name})
                for name in ("a", "b", "c")}
        self.router.publish(item(meta={"skip_users": "a, c"}))
        self.assertEqual({n: len(s.received) for n, s in subs.items()}, {"a": 0, "b": 1, "c": 0})

    def test_require_sub(self) -> None:
        """require-sub: only subscribers also subscribed to the named channel get it."""
        both = self.subscriber(filters=("require-sub",))
        self.router.subscribe("private", both)
        only = self.subscriber(filters=("require-sub",))
        self.router.publish(item(meta={"require_sub": "private"}))
        self.assertEqual((len(both.received), len(only.received)), (1, 0))

    def test_var_subst(self) -> None:
        """var-subst replaces %(name)s per subscriber from its meta; one subscriber with an
        unknown variable is skipped (and logged), the others still get it."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        calls: list[Format] = []
        self.router.add_renderer("http-stream", lambda f: calls.append(f) or f.content)
        ann = self.subscriber(filters=("var-subst",), meta={"name": "Ann"})
        ben = self.subscriber(filters=("var-subst",), meta={"name": "Ben"})
        anon = self.subscriber(filters=("var-subst",))
        self.router.publish(item("hi %(name)s"))
        self.assertEqual(ann.contents, [b"hi Ann"])
        self.assertEqual(ben.contents, [b"hi Ben"])
        self.assertEqual([p for _i, _f, p in ann.received], [b"hi Ann"])
        self.assertEqual(anon.received, [])
        self.assertEqual(len(calls), 3)  # the shared rendering + one per substituted copy
        [warning] = [e for e in events if "filter dropped" in e["log_format"]]
        self.assertIn("name", warning["reason"])

    def test_content_filter_on_the_format(self) -> None:
        """content-filters in the published format apply var-subst too."""
        sub = self.subscriber(meta={"x": "1"})
        self.router.publish(parse_item({"channel": "ch", "formats": {"http-stream": {
            "content": "v=%(x)s", "content-filters": ["var-subst"]}}}))
        self.assertEqual(sub.contents, [b"v=1"])

    def test_substitute_vars(self) -> None:
        self.assertEqual(substitute_vars(b"%(a)s-%(b)s", {"a": "1", "b": "\u00e9"}),
                         b"1-\xc3\xa9")
        self.assertRaises(FilterError, substitute_vars, b"%(c)s", {})


class PrevIdSubscriber(RecordingSubscriber):
    """A recording subscriber that tracks prev ids as a stream hold does: each delivered
    item's id becomes the last id of its channel (if the channel had one)."""

    def __init__(self, last_ids: dict[str, str | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_ids = dict(last_ids)

    def prev_ids(self, item: Item) -> dict[str, str | None]:
        ids = dict(self.last_ids)
        if ids.get(item.channel) is not None and item.id is not None:
            ids[item.channel] = item.id
        return ids

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        super().deliver(item, fmt, prepared)
        if self.last_ids.get(item.channel) is not None and item.id is not None:
            self.last_ids[item.channel] = item.id


class BuildIdTests(_RouterTestCase):
    def subscribe_both(self, sub: RecordingSubscriber, filters: tuple[str, ...]) -> None:
        for channel in ("a", "b"):
            self.router.subscribe(channel, sub, filters)

    def test_composite_id_advances_per_subscriber(self) -> None:
        """Each subscriber renders %I from its own prev ids, counting the item itself
        (Pushpin 1.36: 2_7, 2_8, 3_8); plain subscribers get the shared rendering."""
        renders: list[Format] = []
        self.router.add_renderer("http-stream", lambda f: renders.append(f) or f.content)
        meta = {"id_format": "%(a)s_%(b)s"}
        first = PrevIdSubscriber({"a": "1", "b": "7"}, meta=meta)
        other = PrevIdSubscriber({"a": "10", "b": "70"}, meta=meta)
        plain = RecordingSubscriber()
        for sub in (first, other):
            self.subscribe_both(sub, ("build-id",))
        self.subscribe_both(plain, ())
        for channel, item_id, prev in (("a", "2", "1"), ("b", "8", "7"), ("a", "3", "2")):
            self.router.publish(item("id: %I", channel=channel, id=item_id, prev_id=prev))
        self.assertEqual(first.contents, [b"id: 2_7", b"id: 2_8", b"id: 3_8"])
        self.assertEqual(other.contents, [b"id: 2_70", b"id: 2_8", b"id: 3_8"])
        self.assertEqual(plain.contents, [b"id: %I"] * 3)
        self.assertEqual([p for _i, _f, p in plain.received], [b"id: %I"] * 3)
        self.assertEqual(len(renders), 3 * 3)  # shared + one per filtered subscriber

    def test_filter_error_drops_one_delivery(self) -> None:
        """A subscriber without id_format (or with a bad one) misses the item, logged; the
        others get it; its prev id does not move."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        good = PrevIdSubscriber({"a": "1"}, meta={"id_format": "%(a)s"})
        no_format = PrevIdSubscriber({"a": "1"})
        bad_name = PrevIdSubscriber({"a": "1"}, meta={"id_format": "%(zz)s"})
        for sub in (good, no_format, bad_name):
            self.router.subscribe("a", sub, ("build-id",))
        self.router.publish(item("<%I>", channel="a", id="2"))
        self.assertEqual(good.contents, [b"<2>"])
        self.assertEqual((no_format.received, bad_name.received), ([], []))
        self.assertEqual(no_format.last_ids, {"a": "1"})
        reasons = [e["reason"] for e in events if "filter dropped" in e["log_format"]]
        self.assertEqual(len(reasons), 2)
        self.assertIn("id_format", reasons[0])
        self.assertIn("zz", reasons[1])

    def test_content_filters_on_the_format(self) -> None:
        """content-filters: ["build-id"] in the item applies it to every subscriber."""
        sub = PrevIdSubscriber({"c": "4"}, meta={"id_format": "c%(c)s", "id_encoding": "hex"})
        self.router.subscribe("c", sub)
        self.router.publish(parse_item({"channel": "c", "id": "5", "formats": {"http-stream": {
            "content": "%I %(ab)I", "content-filters": ["build-id"]}}}))
        self.assertEqual(sub.contents, [b"6335 6162"])

    def test_filters_apply_in_the_subscription_order(self) -> None:
        """As Pushpin: the order of the subscription's filters; an item's content-filters
        come after them."""
        meta = {"id_format": "%(c)s", "user": "ann"}
        first = PrevIdSubscriber({"c": "1"}, meta=meta)
        second = PrevIdSubscriber({"c": "1"}, meta=meta)
        self.router.subscribe("c", first, ("build-id", "skip-self", "var-subst"))
        self.router.subscribe("c", second, ("var-subst", "build-id"))
        self.router.publish(item("%I %%(user)s", channel="c", id="2"))
        self.router.publish(item("%(user)s %%I", channel="c", id="3"))
        self.assertEqual(first.contents, [b"2 ann"])
        self.assertEqual(second.contents, [b"ann 3"])
        only_subst = self.subscriber("d", ("var-subst",), meta={"user": "ann"})
        self.router.publish(parse_item({"channel": "d", "formats": {"http-stream": {
            "content": "%(user)s %%(lit)I", "content-filters": ["build-id", "var-subst"]}}}))
        self.assertEqual(only_subst.contents, [])  # build-id after var-subst: no id_format
        self.router.publish(parse_item({"channel": "d", "formats": {"http-stream": {
            "content": "%(user)s", "content-filters": ["var-subst"]}}}))
        self.assertEqual(only_subst.contents, [b"ann"])

    def test_subscriber_without_prev_ids(self) -> None:
        """A subscriber that tracks no prev ids (WebSocket) has no id: literal ids work,
        %I is an error for it."""
        sub = self.subscriber("c", ("build-id",), meta={"id_format": "%(c)s"})
        self.router.publish(item("%(lit)I", channel="c", id="1"))
        self.router.publish(item("%I", channel="c", id="2"))
        self.assertEqual(sub.contents, [b"lit"])

    def test_close_action_is_not_filtered(self) -> None:
        """Formats without content (a close) pass the content filters untouched."""
        sub = self.subscriber("c", ("build-id",))
        self.router.publish(parse_item({"channel": "c", "formats": {"http-stream": {
            "action": "close"}}}))
        self.assertEqual(len(sub.received), 1)


class FailureTests(_RouterTestCase):
    def test_failing_subscriber_is_dropped(self) -> None:
        """A subscriber whose deliver raises is logged, unsubscribed everywhere and closed;
        the others still get the item."""
        before = self.subscriber()
        bad = self.subscriber(fail=True)
        self.router.subscribe("other", bad)
        after = self.subscriber()
        self.router.publish(item("a"))
        self.assertEqual((before.contents, after.contents), ([b"a"], [b"a"]))
        self.assertEqual(bad.closed, ["internal error"])
        self.assertEqual(self.router.channels_of(bad), frozenset())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.router.publish(item("b"))
        self.assertEqual(after.contents, [b"a", b"b"])

    def test_failing_multi_format_subscriber_alone_on_channel(self) -> None:
        """A multi-format subscriber failing on the first format does not break delivery of
        the item's other formats (its group may vanish mid-loop)."""
        bad = self.subscriber(formats=("http-stream", "ws-message"), fail=True)
        ws = self.subscriber("other", formats=("ws-message",))
        self.router.publish(parse_item({"channel": "ch", "formats": {
            "http-stream": {"content": "s"}, "ws-message": {"content": "w"}}}))
        self.assertEqual(bad.closed, ["internal error"])
        self.assertFalse(self.router.has_subscribers("ch"))
        self.assertEqual(ws.received, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_subscriber_leaving_during_delivery(self) -> None:
        """A subscriber that unsubscribes itself in deliver (a long-poll completing) leaves
        the other formats' subscribers unaffected."""
        router = self.router

        class OneShot(RecordingSubscriber):
            def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
                super().deliver(item, fmt, prepared)
                router.unsubscribe_all(self)

        once = OneShot(formats=("http-response", "http-stream"))
        router.subscribe("ch", once)
        stream = self.subscriber()
        router.publish(parse_item({"channel": "ch", "formats": {
            "http-response": {"body": "r"}, "http-stream": {"content": "s"}}}))
        self.assertEqual(len(once.received), 1)
        self.assertEqual(stream.contents, [b"s"])


class ChannelListenerTests(_RouterTestCase):
    def test_listener_sees_first_and_last_subscriber(self) -> None:
        """Listeners hear a channel's first subscriber and its last leaving, once each;
        channels existing at registration are replayed."""
        existing = self.subscriber("old")
        listener = RecordingListener()
        self.router.add_channel_listener(listener)
        a = self.subscriber("new")
        b = self.subscriber("new")
        self.router.unsubscribe("new", a)
        self.router.unsubscribe("new", b)
        self.router.unsubscribe_all(existing)
        self.assertEqual(listener.events, [
            ("added", "old"), ("added", "new"), ("removed", "new"), ("removed", "old")])
