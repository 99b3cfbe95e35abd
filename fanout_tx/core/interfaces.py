"""The seams between the core and the transports: subscriber, bus, channel listener."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ISubscriber(Interface):
    """Something that receives published items: a held HTTP request, a WebSocket, a JID, a
    webhook. Every transport implements this one interface, so the router knows none of them.
    """

    formats = Attribute("Tuple of format names this subscriber takes, e.g. ('http-stream',).")
    meta = Attribute("Mapping[str, str] of subscription meta, read by filters and var-subst.")

    def deliver(item, fmt, prepared):
        """Hand over one item. ``fmt`` is the item's Format for this subscriber (content
        filters already applied); ``prepared`` is what the transport's renderer made of it,
        once per item, shared by every subscriber. Must not block; may raise, which drops
        this subscriber only."""

    def close(reason):
        """End the subscription from the server side (shutdown, internal error)."""

    def recover():
        """Re-request the origin for this session (``POST /recover``); may do nothing."""


class IChannelListener(Interface):
    """Told when a channel gains its first subscriber or loses its last (ZeroMQ SUB, Redis)."""

    def channel_added(channel):
        """``channel`` now has at least one local subscriber."""

    def channel_removed(channel):
        """``channel`` has no local subscriber any more."""


class IRouterObserver(Interface):
    """Told of subscription changes and of each item's deliveries, once per item and format
    (never once per subscriber): what Pushpin's stats socket reports (conn, sub, message)."""

    def subscriber_added(subscriber):
        """``subscriber`` took its first channel."""

    def subscriber_removed(subscriber):
        """``subscriber`` left its last channel."""

    def group_changed(channel, format_name, count):
        """``channel`` now has ``count`` subscribers taking ``format_name`` (0: none)."""

    def delivered(item, format_name, count):
        """``item`` went to ``count`` subscribers in ``format_name``."""


class IBus(Interface):
    """Where validated items go. LocalBus delivers in this process; RedisBus also shares
    them with other instances."""

    def publish(items, input_name):
        """Publish a list of Items (all already valid). Returns a Deferred that fires once
        the items are accepted, or fails (e.g. Redis unreachable) so the publisher can be
        told; ``input_name`` is http, zmq-pull or zmq-sub, for metrics."""
