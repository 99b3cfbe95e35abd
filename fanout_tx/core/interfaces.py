"""The seams between the core and the transports: subscriber, bus, channel listener."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from fanout_tx.core.formats.base import Format
    from fanout_tx.core.items import Item


class ISubscriber(Interface):
    """Something that receives published items: a held HTTP request, a WebSocket, a JID, a
    webhook. Every transport implements this one interface, so the router knows none of them.
    """

    formats = Attribute("Tuple of format names this subscriber takes, e.g. ('http-stream',).")
    meta = Attribute("Mapping[str, str] of subscription meta, read by filters and var-subst.")

    def deliver(item: Item, fmt: Format, prepared: Any) -> None:
        """Hand over one item. ``fmt`` is the item's Format for this subscriber (content
        filters already applied); ``prepared`` is what the transport's renderer made of it,
        once per item, shared by every subscriber. Must not block; may raise, which drops
        this subscriber only."""

    def close(reason: str) -> None:
        """End the subscription from the server side (shutdown, internal error)."""

    def recover() -> None:
        """Re-request the origin for this session (``POST /recover``); may do nothing."""


class IChannelListener(Interface):
    """Told when a channel gains its first subscriber or loses its last (ZeroMQ SUB, Redis)."""

    def channel_added(channel: str) -> None:
        """``channel`` now has at least one local subscriber."""

    def channel_removed(channel: str) -> None:
        """``channel`` has no local subscriber any more."""


class IRouterObserver(Interface):
    """Told of subscription changes and of each item's deliveries, once per item and format
    (never once per subscriber): what Pushpin's stats socket reports (conn, sub, message)."""

    def subscriber_added(subscriber: ISubscriber) -> None:
        """``subscriber`` took its first channel."""

    def subscriber_removed(subscriber: ISubscriber) -> None:
        """``subscriber`` left its last channel."""

    def group_changed(channel: str, format_name: str, count: int) -> None:
        """``channel`` now has ``count`` subscribers taking ``format_name`` (0: none)."""

    def delivered(item: Item, format_name: str, count: int) -> None:
        """``item`` went to ``count`` subscribers in ``format_name``."""


class IBus(Interface):
    """Where validated items go. LocalBus delivers in this process; RedisBus also shares
    them with other instances."""

    def publish(items: Sequence[Item], input_name: str) -> Deferred[None]:
        """Publish a list of Items (all already valid). Returns a Deferred that fires once
        the items are accepted, or fails (e.g. Redis unreachable) so the publisher can be
        told; ``input_name`` is http, zmq-pull or zmq-sub, for metrics."""


class IHistory(Interface):
    """Built-in channel history (``[history]``): kept items with an id, per channel, oldest
    first. The router records; transports and the history API read. Reads return Deferreds
    (the Redis store answers later; the in-memory one at once)."""

    def record(item: Item) -> None:
        """Keep ``item`` (it has an id); called by the router once per item, in delivery
        order. Must not block or raise."""

    def since(channel: str, item_id: str, limit: int) -> Deferred[list[Item] | None]:
        """Fires with the kept items after the one with ``item_id`` (at most ``limit``,
        oldest first; ``[]`` when it is the newest), or None when no kept item of
        ``channel`` has that id (it is older than history: the caller falls back)."""

    def last(channel: str, count: int) -> Deferred[list[Item]]:
        """Fires with the newest ``count`` kept items of ``channel``, oldest first."""
