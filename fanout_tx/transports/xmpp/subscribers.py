"""XMPP subscribers: one per full JID, registered in the shared router.

A JID's entry (and its set-meta values) lives as long as it has a subscription; it ends on
``unavailable`` presence, on an error bounce, on the backend's ``unsubscribe``, or when the
router closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from twisted.logger import Logger
from zope.interface import implementer

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.core.replay import Replay
from fanout_tx.core.router import Router
from fanout_tx.grip.directives import FilterError
from fanout_tx.grip.instruct import Channel
from fanout_tx.transports.xmpp.render import PreparedStanza, escape_attr

FORMATS = ("xmpp-message", "xmpp-stanza")

Render = Callable[[Format], PreparedStanza]


@implementer(ISubscriber)
class XmppSubscriber:
    """One full JID; delivery is a concatenation around its pre-escaped ``to`` value."""

    formats = FORMATS
    _log = Logger()

    def __init__(self, jid: str, send: Callable[[bytes], None],
                 on_close: Callable[[XmppSubscriber, str], None],
                 render: Render | None = None) -> None:
        self.jid = jid
        self.meta: dict[str, str] = {}
        self._to = escape_attr(jid)
        self._send = send
        self._on_close = on_close
        self._render = render  # for items replayed from history
        self.replay = Replay(FORMATS)

    def deliver(self, item: Item, fmt: Format, prepared: PreparedStanza) -> None:
        if self.replay.waiting is not None:  # a since/rewind is being looked up
            self.replay.waiting.append((item, fmt, prepared))
            return
        self._send(prepared.addressed(self._to))

    def send_item(self, item: Item, fmt: Format, prepared: PreparedStanza | None) -> None:
        """Deliver ``item`` once a replay is done; a replayed one is rendered here."""
        if prepared is None:
            if self._render is None:
                return
            try:
                prepared = self._render(fmt)
            except FilterError as e:
                self._log.warn("replayed {id} not sent to {jid}: {reason}", id=item.id,
                               jid=self.jid, reason=str(e))
                return
        self._send(prepared.addressed(self._to))

    def close(self, reason: str) -> None:
        self._on_close(self, reason)

    def recover(self) -> None:
        """Nothing to re-request: an XMPP subscription has no held origin request."""


class JidSubscriptions:
    """Full JID -> XmppSubscriber, kept in step with the router."""

    _log = Logger()

    def __init__(self, router: Router, send: Callable[[bytes], None], max_channels: int,
                 render: Render | None = None) -> None:
        self._router = router
        self._send = send
        self._max_channels = max_channels
        self._render = render
        self._by_jid: dict[str, XmppSubscriber] = {}

    def __len__(self) -> int:
        return len(self._by_jid)

    def get(self, jid: str) -> XmppSubscriber | None:
        return self._by_jid.get(jid)

    def meta_of(self, jid: str) -> Mapping[str, str]:
        subscriber = self._by_jid.get(jid)
        return dict(subscriber.meta) if subscriber else {}

    def channels_of(self, jid: str) -> frozenset[str]:
        subscriber = self._by_jid.get(jid)
        return self._router.channels_of(subscriber) if subscriber else frozenset()

    def apply(
        self, jid: str, subscribe: Iterable[Channel], unsubscribe: Iterable[str],
        set_meta: Mapping[str, str],
    ) -> None:
        """One backend answer for ``jid``: meta first (filters read it), then channels."""
        subscriber = self._by_jid.get(jid)
        if subscriber is None:
            subscriber = XmppSubscriber(jid, self._send, self._closed, self._render)
            self._by_jid[jid] = subscriber
        for key, value in set_meta.items():
            if value:
                subscriber.meta[key] = value
            else:
                subscriber.meta.pop(key, None)
        for channel in subscribe:
            current = self._router.channels_of(subscriber)
            if channel.name not in current and len(current) >= self._max_channels:
                self._log.warn(
                    "{jid} is at {limit} subscriptions; not subscribing to {channel}",
                    jid=jid, limit=self._max_channels, channel=channel.name,
                )
                continue
            self._router.subscribe(channel.name, subscriber, channel.filters)
            subscriber.replay.start(self._router.history, channel.name, channel.history_since,
                                    channel.history_rewind, subscriber.send_item)
        for name in unsubscribe:
            self._router.unsubscribe(name, subscriber)
        if not self._router.channels_of(subscriber):
            del self._by_jid[jid]

    def drop(self, jid: str, reason: str) -> None:
        """End every subscription of ``jid`` (unavailable, bounce)."""
        subscriber = self._by_jid.pop(jid, None)
        if subscriber is not None:
            self._router.unsubscribe_all(subscriber)
            self._log.info("{jid} unsubscribed: {reason}", jid=jid, reason=reason)

    def drop_all(self, reason: str) -> None:
        for jid in list(self._by_jid):
            self.drop(jid, reason)

    def _closed(self, subscriber: XmppSubscriber, reason: str) -> None:
        if self._by_jid.get(subscriber.jid) is subscriber:
            self.drop(subscriber.jid, reason)
