"""The router side of a webhook subscription: render once per item, enqueue per subscription.

``render_request`` is the renderer registered for ``http-request``: the router calls it once
per item and hands the result to every webhook subscriber, which then only joins its URL,
merges its headers and enqueues. Signing happens per attempt (the timestamp is the
attempt's), in the delivery engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import Item
from fanout_tx.core.replay import Replay
from fanout_tx.transports.webhooks.delivery import DeliveryEngine
from fanout_tx.transports.webhooks.model import Delivery, Headers, Subscription
from fanout_tx.transports.webhooks.signing import message_id
from fanout_tx.transports.webhooks.ssrf import parse_url


@dataclass(frozen=True)
class RenderedRequest:
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    header_names: frozenset[str]


def render_request(fmt: Format) -> RenderedRequest:
    pairs = tuple(fmt.fields["headers"])
    return RenderedRequest(
        fmt.fields["method"], fmt.fields["path"], fmt.fields["query"], pairs,
        fmt.content or b"", frozenset(name.lower() for name, _value in pairs),
    )


@implementer(ISubscriber)
@dataclass(eq=False)
class WebhookSubscriber:
    """One subscription, subscribed to each of its channels."""

    subscription: Subscription
    engine: DeliveryEngine
    formats: tuple[str, ...] = ("http-request",)
    meta: Mapping[str, str] = field(default_factory=dict)

    _log = Logger()

    def __post_init__(self) -> None:
        self._target = parse_url(self.subscription.url)
        self.replay = Replay(self.formats)  # a backlog asked for at creation

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        if self.replay.waiting is not None:  # the backlog is being looked up
            self.replay.waiting.append((item, fmt, prepared))
            return
        self.send_item(item, fmt, prepared)

    def send_item(self, item: Item, fmt: Format, prepared: RenderedRequest | None) -> None:
        """Enqueue one delivery; an item replayed from history is rendered here."""
        request = prepared if prepared is not None else render_request(fmt)
        subscription = self.subscription
        headers = tuple(
            pair for pair in subscription.headers if pair[0].lower() not in request.header_names
        ) + request.headers
        self.engine.enqueue(Delivery(
            message_id(subscription.id, item.channel, item.id, item.share_key),
            subscription.id, item.channel,
            request.method, self._target.joined(request.path, request.query), headers,
            request.body,
        ))

    def close(self, reason: str) -> None:
        # Webhook subscriptions outlive the process; only the API or a 410 removes them.
        self._log.debug("webhook subscription {id} detached: {reason}",
                        id=self.subscription.id, reason=reason)

    def recover(self) -> None:
        """Nothing to re-request: a webhook has no origin session."""
