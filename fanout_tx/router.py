"""The in-reactor pub/sub router: channel -> format -> subscribers.

Publishing one item does its per-item work once: de-duplication, sequencing, and one call
per format to the renderer the transport registered. Per subscriber there is only a filter
check (skipped when the item carries no meta and the subscription asks for no content
filter) and ``deliver``. One failing subscriber is logged and dropped; the loop goes on.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from fanout_tx.formats import Format
from fanout_tx.interfaces import IChannelListener, ISubscriber
from fanout_tx.items import Item

Renderer = Callable[[Format], Any]

DELIVERY_FILTERS = frozenset({"skip-self", "skip-users", "require-sub"})
CONTENT_FILTERS = frozenset({"var-subst"})
KNOWN_FILTERS = DELIVERY_FILTERS | CONTENT_FILTERS

_VAR = re.compile(rb"%\((?P<name>[^)]*)\)s")


class FilterError(ValueError):
    """A content filter could not be applied for one subscriber (e.g. unknown variable)."""


def substitute_vars(content: bytes, meta: dict[str, str]) -> bytes:
    """``var-subst``: ``%(name)s`` -> the subscription's meta value; unknown names fail."""

    def replace(match: re.Match[bytes]) -> bytes:
        name = match["name"].decode("utf-8", "replace")
        if name not in meta:
            raise FilterError(f"no such variable {name!r}")
        return meta[name].encode("utf-8")

    return _VAR.sub(replace, content)


def _dropped_by_meta(
    filters: frozenset[str], publish_meta: dict[str, str], sub_meta: dict[str, str],
    channels: Iterable[str],
) -> bool:
    """Pushpin's delivery filters, comparing the publish meta with the subscription meta."""
    user = sub_meta.get("user", "")
    if "skip-self" in filters and user and publish_meta.get("sender") == user:
        return True
    if "skip-users" in filters and user:
        skip = {u.strip() for u in publish_meta.get("skip_users", "").split(",")}
        if user in skip:
            return True
    if "require-sub" in filters:
        required = publish_meta.get("require_sub", "")
        if required and required not in channels:
            return True
    return False


class Router:
    """Subscriptions, per-channel last ids, id de-duplication and prev-id sequencing."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        message_wait: float = 5.0,
        id_cache_ttl: float = 60.0,
        max_pending: int = 100,
        max_last_ids: int = 100_000,
    ) -> None:
        self._clock = clock
        self._message_wait = message_wait
        self._id_cache_ttl = id_cache_ttl
        self._max_pending = max_pending
        self._max_last_ids = max_last_ids
        # channel -> format name -> subscriber -> subscription filters
        self._groups: dict[str, dict[str, dict[Any, frozenset[str]]]] = {}
        # subscriber -> channel -> filters (the one place to unsubscribe everything)
        self._by_subscriber: dict[Any, dict[str, frozenset[str]]] = {}
        self._renderers: dict[str, Renderer] = {}
        self._listeners: list[IChannelListener] = []
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
            listener.channel_added(channel)

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, channel: str, subscriber: ISubscriber, filters: Iterable[str] = ()) -> None:
        """Idempotent; a repeated subscribe replaces the subscription's filters."""
        filter_set = frozenset(filters)
        is_new_channel = channel not in self._groups
        groups = self._groups.setdefault(channel, {})
        for format_name in subscriber.formats:
            groups.setdefault(format_name, {})[subscriber] = filter_set
        self._by_subscriber.setdefault(subscriber, {})[channel] = filter_set
        if is_new_channel:
            for listener in self._listeners:
                listener.channel_added(channel)

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
                group.pop(subscriber, None)
                if not group:
                    del groups[format_name]
        if not groups:
            del self._groups[channel]
            self._drop_pending(channel)
            for listener in self._listeners:
                listener.channel_removed(channel)

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

    def set_last_id(self, channel: str, item_id: str) -> None:
        self._last_ids[channel] = item_id
        self._last_ids.move_to_end(channel)
        if len(self._last_ids) > self._max_last_ids:
            self._last_ids.popitem(last=False)

    # -- publishing -----------------------------------------------------------------------

    def is_duplicate(self, item: Item) -> bool:
        """True when the item's id was seen on its channel within ``id_cache_ttl``;
        otherwise records it."""
        if item.id is None:
            return False
        now = self._clock.seconds()
        seen = self._seen_ids
        while seen:
            key, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[key]
        key = (item.channel, item.id)
        if key in seen:
            return True
        seen[key] = now + self._id_cache_ttl
        return False

    def publish(self, item: Item) -> None:
        """Dedupe, sequence, then deliver to every matching subscriber."""
        if self.is_duplicate(item):
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
        groups = self._groups.get(item.channel)
        if not groups:
            return
        present = [name for name in item.formats if name in groups]
        # A subscriber that takes several formats (XMPP) gets the item once, in the first one.
        seen: set[Any] | None = set() if len(present) > 1 else None
        for format_name in present:
            fmt = item.formats[format_name]
            renderer = self._renderers.get(format_name)
            prepared = renderer(fmt) if renderer is not None else fmt
            count = 0
            for subscriber, filters in list(groups[format_name].items()):
                if seen is not None:
                    if subscriber in seen:
                        continue
                    seen.add(subscriber)
                sub_fmt, sub_prepared = fmt, prepared
                if filters or fmt.content_filters:
                    try:
                        if item.meta and _dropped_by_meta(
                            filters, item.meta, subscriber.meta,
                            self._by_subscriber.get(subscriber, ()),
                        ):
                            continue
                        if "var-subst" in filters or "var-subst" in fmt.content_filters:
                            sub_fmt = self._substituted(fmt, subscriber)
                            sub_prepared = renderer(sub_fmt) if renderer else sub_fmt
                    except FilterError as e:
                        self._log.warn(
                            "filter dropped {id} on {channel} for one subscriber: {reason}",
                            id=item.id, channel=item.channel, reason=str(e),
                        )
                        continue
                try:
                    subscriber.deliver(item, sub_fmt, sub_prepared)
                except Exception:
                    self._log.failure(
                        "subscriber failed on {channel}; dropping it", channel=item.channel
                    )
                    self.unsubscribe_all(subscriber)
                    self._safe_close(subscriber, "internal error")
                    continue
                count += 1
            self.deliveries[format_name] += count

    @staticmethod
    def _substituted(fmt: Format, subscriber: ISubscriber) -> Format:
        if fmt.content is None:
            return fmt
        return fmt.with_content(substitute_vars(fmt.content, dict(subscriber.meta)))

    def _safe_close(self, subscriber: ISubscriber, reason: str) -> None:
        try:
            subscriber.close(reason)
        except Exception:
            self._log.failure("closing a subscriber failed")
