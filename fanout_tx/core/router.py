"""The in-reactor pub/sub router: channel -> format -> subscribers.

Publishing one item does its per-item work once: de-duplication, sequencing, and one call
per format to the renderer the transport registered. Subscribers without filters cost one
``deliver`` call each; only filtered subscriptions (or content filters, or multi-format
items) take the checked loop. One failing subscriber is logged and dropped; the loop goes on.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from functools import partial
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import IChannelListener, IHistory, IRouterObserver, ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.grip import content_filters
from fanout_tx.grip.directives import FilterError

Renderer = Callable[[Format], Any]

DELIVERY_FILTERS = frozenset({"skip-self", "skip-users", "require-sub"})
CONTENT_FILTERS = content_filters.CONTENT_FILTERS
KNOWN_FILTERS = DELIVERY_FILTERS | CONTENT_FILTERS

def _prev_ids_of(subscriber: Any, item: Item) -> content_filters.PrevIds:
    """``build-id``'s context. A subscriber that tracks prev ids (a stream or long-poll
    hold) has ``prev_ids(item)``: per channel, the last id it knows, counting ``item`` as
    received. Others (e.g. WebSocket, as in Pushpin) have none."""
    prev_ids = getattr(subscriber, "prev_ids", None)
    return prev_ids(item) if prev_ids is not None else {}


class _PublishMeta:
    """The publish side of Pushpin's delivery filters, read once per item (not once per
    subscriber) and compared with each subscription's meta."""

    __slots__ = ("require_sub", "sender", "skip_users")

    def __init__(self, meta: Mapping[str, str]) -> None:
        self.sender = meta.get("sender", "")
        self.skip_users = frozenset(u.strip() for u in meta.get("skip_users", "").split(","))
        self.require_sub = meta.get("require_sub", "")

    def drops(self, filters: frozenset[str], subscriber: ISubscriber,
              subscriptions: Mapping[Any, Container[str]]) -> bool:
        """True when ``subscriber`` (subscribed with ``filters``) must not get the item."""
        user = subscriber.meta.get("user", "")
        if "skip-self" in filters and user and self.sender == user:
            return True
        if "skip-users" in filters and user and user in self.skip_users:
            return True
        return bool(
            "require-sub" in filters and self.require_sub
            and self.require_sub not in subscriptions.get(subscriber, ())
        )


class _Group:
    """The subscribers of one (channel, format). Those without filters are kept apart, so
    the common case costs one ``deliver`` call per subscriber and nothing else."""

    __slots__ = ("filtered", "plain")

    def __init__(self) -> None:
        self.plain: dict[Any, None] = {}
        self.filtered: dict[Any, frozenset[str]] = {}

    def add(self, subscriber: Any, filters: frozenset[str]) -> None:
        self.remove(subscriber)
        if filters:
            self.filtered[subscriber] = filters
        else:
            self.plain[subscriber] = None

    def remove(self, subscriber: Any) -> None:
        self.plain.pop(subscriber, None)
        self.filtered.pop(subscriber, None)

    def __bool__(self) -> bool:
        return bool(self.plain or self.filtered)


_NO_FILTERS: frozenset[str] = frozenset()


class Router:
    """Subscriptions, per-channel last ids, id de-duplication and prev-id sequencing."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        message_wait: float = 5.0,
        id_cache_ttl: float = 60.0,
        id_cache_max: int = 100_000,
        max_pending: int = 100,
        max_last_ids: int = 100_000,
        history: IHistory | None = None,
    ) -> None:
        self._clock = clock
        self._message_wait = message_wait
        self._id_cache_ttl = id_cache_ttl
        self._id_cache_max = id_cache_max
        self._max_pending = max_pending
        self._max_last_ids = max_last_ids
        # [history]: every delivered item with an id is recorded there, once (not per
        # subscriber), in delivery order; None when history is off.
        self.history = history
        # channel -> format name -> subscribers of that format (with their filters)
        self._groups: dict[str, dict[str, _Group]] = {}
        # subscriber -> channel -> filters in the order given (the one place to unsubscribe
        # everything; content filters apply in that order)
        self._by_subscriber: dict[Any, dict[str, tuple[str, ...]]] = {}
        self._renderers: dict[str, Renderer] = {}
        self._listeners: list[IChannelListener] = []
        self._observers: list[IRouterObserver] = []
        self._last_ids: OrderedDict[str, str] = OrderedDict()
        self._seen_ids: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._pending: dict[str, list[tuple[Item, IDelayedCall]]] = {}
        self.deliveries: Counter[str] = Counter()

    # -- wiring ---------------------------------------------------------------------------

    def add_renderer(self, format_name: str, renderer: Renderer) -> None:
        """Register the once-per-item renderer for a format (done by transports at wiring)."""
        self._renderers[format_name] = renderer

    def add_channel_listener(self, listener: IChannelListener) -> None:
        self._listeners.append(listener)
        for channel in self._groups:
            self._tell(listener.channel_added, channel)

    def add_observer(self, observer: IRouterObserver) -> None:
        """Stats: told of subscription changes and per-item delivery counts."""
        self._observers.append(observer)

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, channel: str, subscriber: ISubscriber, filters: Iterable[str] = ()) -> None:
        """Idempotent; a repeated subscribe replaces the subscription's filters."""
        ordered = tuple(dict.fromkeys(filters))
        filter_set = frozenset(ordered)
        is_new_channel = channel not in self._groups
        groups = self._groups.setdefault(channel, {})
        for format_name in subscriber.formats:
            groups.setdefault(format_name, _Group()).add(subscriber, filter_set)
        is_new_subscriber = subscriber not in self._by_subscriber
        self._by_subscriber.setdefault(subscriber, {})[channel] = ordered
        if self._observers:
            self._observe(subscriber, channel, groups, is_new_subscriber, False)
        if is_new_channel:
            for listener in self._listeners:
                self._tell(listener.channel_added, channel)

    def unsubscribe(self, channel: str, subscriber: ISubscriber) -> None:
        channels = self._by_subscriber.get(subscriber)
        if channels is None or channels.pop(channel, None) is None:
            return
        if not channels:
            del self._by_subscriber[subscriber]
        groups = self._groups[channel]
        for format_name in subscriber.formats:
            group = groups.get(format_name)
            if group is not None:
                group.remove(subscriber)
                if not group:
                    del groups[format_name]
        if self._observers:
            self._observe(subscriber, channel, groups, False, not channels)
        if not groups:
            del self._groups[channel]
            self._drop_pending(channel)
            for listener in self._listeners:
                self._tell(listener.channel_removed, channel)

    def _tell(self, event: Callable[[str], None], channel: str) -> None:
        """A listener (the ZeroMQ SUB input) that fails is logged; the subscribe or
        unsubscribe that told it still completes."""
        try:
            event(channel)
        except Exception:
            self._log.failure("channel listener failed on {channel!r}", channel=channel)

    def _observe(self, subscriber: ISubscriber, channel: str, groups: dict[str, _Group],
                 added: bool, removed: bool) -> None:
        for observer in self._observers:
            if added:
                observer.subscriber_added(subscriber)
            for format_name in subscriber.formats:
                group = groups.get(format_name)
                count = len(group.plain) + len(group.filtered) if group else 0
                observer.group_changed(channel, format_name, count)
            if removed:
                observer.subscriber_removed(subscriber)

    def unsubscribe_all(self, subscriber: ISubscriber) -> None:
        for channel in list(self._by_subscriber.get(subscriber, ())):
            self.unsubscribe(channel, subscriber)

    def channels_of(self, subscriber: ISubscriber) -> frozenset[str]:
        return frozenset(self._by_subscriber.get(subscriber, ()))

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._groups

    def channels(self) -> frozenset[str]:
        return frozenset(self._groups)

    def subscriber_count(self) -> int:
        return len(self._by_subscriber)

    def subscription_count(self) -> int:
        return sum(len(channels) for channels in self._by_subscriber.values())

    def subscribers(self) -> list[ISubscriber]:
        return list(self._by_subscriber)

    def recover_all(self) -> int:
        """Ask every subscriber to re-request its origin; returns how many were asked."""
        subscribers = self.subscribers()
        for subscriber in subscribers:
            try:
                subscriber.recover()
            except Exception:
                self._log.failure("recover failed for {subscriber!r}", subscriber=subscriber)
        return len(subscribers)

    def close_all(self, reason: str) -> None:
        for subscriber in self.subscribers():
            self._safe_close(subscriber, reason)

    # -- last ids -------------------------------------------------------------------------

    def last_id(self, channel: str) -> str | None:
        return self._last_ids.get(channel)

    def last_ids(self) -> list[tuple[str, str]]:
        """Every channel's last id, least recently set first (a new worker's start)."""
        return list(self._last_ids.items())

    def set_last_id(self, channel: str, item_id: str) -> None:
        self._last_ids[channel] = item_id
        self._last_ids.move_to_end(channel)
        if len(self._last_ids) > self._max_last_ids:
            self._last_ids.popitem(last=False)

    # -- publishing -----------------------------------------------------------------------

    def seen_before_and_record(self, item: Item) -> bool:
        """True when the item's id was seen on its channel within ``id_cache_ttl``; when it
        was not, records it, so the next item with that id is the duplicate. At most
        ``id_cache_max`` ids are kept (oldest forgotten first), so a publisher sending unique
        ids fast cannot grow the cache without bound."""
        return item.id is not None and self._seen_before(item.channel, item.id)

    def _seen_before(self, channel: str, item_id: str) -> bool:
        now = self._clock.seconds()
        seen = self._seen_ids
        while seen:
            key, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[key]
        key = (channel, item_id)
        if key in seen:
            return True
        seen[key] = now + self._id_cache_ttl
        if len(seen) > self._id_cache_max:
            seen.popitem(last=False)
        return False

    def needs_whole_item(self, channel: str) -> bool:
        """Whether publishing on ``channel`` here needs the item itself: something here
        subscribes to it, or a history records it. When not, ``publish_unheld`` with its id
        does what ``publish`` would, so a worker can skip decoding the item's formats."""
        return channel in self._groups or self.history is not None

    def publish_unheld(self, channel: str, item_id: str | None) -> None:
        """``publish`` for an item on a channel nothing here holds (and no history): only
        the bookkeeping it would do, de-duplication and the channel's last id (no
        subscriber, so nothing waits for a predecessor)."""
        if item_id is not None and not self._seen_before(channel, item_id):
            self.set_last_id(channel, item_id)

    def publish(self, item: Item) -> None:
        """Dedupe, sequence, then deliver to every matching subscriber."""
        if self.seen_before_and_record(item):
            self._log.debug("dropped duplicate {id} on {channel}", id=item.id, channel=item.channel)
            return
        channel = item.channel
        last = self._last_ids.get(channel)
        if (
            item.prev_id is not None
            and not item.no_seq
            and last is not None
            and last != item.prev_id
            and channel in self._groups
        ):
            pending = self._pending.setdefault(channel, [])
            if len(pending) < self._max_pending:
                timer = self._clock.callLater(self._message_wait, self._expire_pending, item)
                pending.append((item, timer))
                return
        self._deliver_in_order(item)

    def _deliver_in_order(self, item: Item) -> None:
        self._deliver(item)
        # Release held items whose predecessor has just gone out, in chain order.
        pending = self._pending.get(item.channel)
        while pending:
            last = self._last_ids.get(item.channel)
            successor = next((p for p in pending if p[0].prev_id == last), None)
            if successor is None:
                break
            pending.remove(successor)
            successor[1].cancel()
            self._deliver(successor[0])
        if pending is not None and not pending:
            self._pending.pop(item.channel, None)

    def _expire_pending(self, item: Item) -> None:
        pending = self._pending.get(item.channel, [])
        for entry in pending:
            if entry[0] is item:
                pending.remove(entry)
                break
        if not pending:
            self._pending.pop(item.channel, None)
        self._log.info(
            "sending {id} on {channel} after waiting for its predecessor {prev}",
            id=item.id, channel=item.channel, prev=item.prev_id,
        )
        self._deliver_in_order(item)

    def _drop_pending(self, channel: str) -> None:
        for _item, timer in self._pending.pop(channel, []):
            timer.cancel()

    def _deliver(self, item: Item) -> None:
        if item.id is not None:
            self.set_last_id(item.channel, item.id)
            if self.history is not None:
                self.history.record(item)
        groups = self._groups.get(item.channel)
        if not groups:
            return
        present = [name for name in item.formats if name in groups]
        # A subscriber that takes several formats (XMPP) gets the item once, in the first one.
        seen: set[Any] | None = set() if len(present) > 1 else None
        for format_name in present:
            group = groups.get(format_name)
            if not group:  # emptied by an unsubscribe during this very delivery
                continue
            fmt = item.formats[format_name]
            renderer = self._renderers.get(format_name)
            prepared = renderer(fmt) if renderer is not None else fmt
            checked = list(group.filtered.items())
            if seen is None and not fmt.content_filters:
                count = self._deliver_plain(item, fmt, prepared, list(group.plain))
            else:
                checked += [(subscriber, _NO_FILTERS) for subscriber in group.plain]
                count = 0
            if checked:
                count += self._deliver_checked(item, fmt, prepared, renderer, checked, seen)
            self.deliveries[format_name] += count
            for observer in self._observers:
                observer.delivered(item, format_name, count)

    def _deliver_plain(self, item: Item, fmt: Format, prepared: Any,
                       subscribers: list[Any]) -> int:
        """The hot loop: no filters, no content filters, one format per subscriber."""
        delivered = len(subscribers)
        for subscriber in subscribers:
            try:
                subscriber.deliver(item, fmt, prepared)
            except Exception:
                self._drop_failed(subscriber, item.channel)
                delivered -= 1
        return delivered

    def _deliver_checked(
        self, item: Item, fmt: Format, prepared: Any, renderer: Renderer | None,
        entries: list[tuple[Any, frozenset[str]]], seen: set[Any] | None,
    ) -> int:
        """Delivery with filters, content filters, or a multi-format item."""
        delivered = 0
        publish_meta = _PublishMeta(item.meta) if item.meta else None
        item_filters = tuple(name for name in fmt.content_filters if name in CONTENT_FILTERS)
        for subscriber, filters in entries:
            if seen is not None:
                if subscriber in seen:
                    continue
                seen.add(subscriber)
            if filters and publish_meta is not None and publish_meta.drops(
                filters, subscriber, self._by_subscriber
            ):
                self._skip(subscriber, item, fmt)
                continue
            sub_fmt, sub_prepared = fmt, prepared
            names = item_filters
            if "build-id" in filters or "var-subst" in filters:  # cheaper than a set op
                own = self._by_subscriber.get(subscriber, {}).get(item.channel, ())
                names = own + tuple(name for name in item_filters if name not in own)
            if names and fmt.content is not None:
                try:
                    content = content_filters.apply_content_filters(
                        names, fmt.content, subscriber.meta,
                        partial(_prev_ids_of, subscriber, item),
                    )
                    sub_fmt = fmt.with_content(content)
                    sub_prepared = renderer(sub_fmt) if renderer else sub_fmt
                except FilterError as e:
                    self._log.warn(
                        "filter dropped {id} on {channel} for one subscriber: {reason}",
                        id=item.id, channel=item.channel, reason=str(e),
                    )
                    self._skip(subscriber, item, fmt)
                    continue
            try:
                subscriber.deliver(item, sub_fmt, sub_prepared)
            except Exception:
                self._drop_failed(subscriber, item.channel)
                continue
            delivered += 1
        return delivered

    def _skip(self, subscriber: Any, item: Item, fmt: Format) -> None:
        """Tell a subscriber that tracks last ids (a hold: ``skipped(item, fmt)``) that a
        filter kept ``item`` from it: as Pushpin, the item still moves its channel's last
        id, or the next item would look like a gap and the recovery would replay the very
        item the filter dropped (django-eventstream's ``skip_user_ids``)."""
        skipped = getattr(subscriber, "skipped", None)
        if skipped is None:
            return
        try:
            skipped(item, fmt)
        except Exception:
            self._drop_failed(subscriber, item.channel)

    def _drop_failed(self, subscriber: Any, channel: str) -> None:
        self._log.failure("subscriber failed on {channel}; dropping it", channel=channel)
        self.unsubscribe_all(subscriber)
        self._safe_close(subscriber, "internal error")

    def _safe_close(self, subscriber: ISubscriber, reason: str) -> None:
        try:
            subscriber.close(reason)
        except Exception:
            self._log.failure("closing a subscriber failed")
