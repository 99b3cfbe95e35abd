"""WebhookService: the webhooks transport's life (load, register, remove, stop).

It owns the subscriptions: each one is a WebhookSubscriber on the router for each of its
channels and a queue in the delivery engine. Registration vets the URL (SSRF) and, when
asked, checks intent with a challenge before anything is stored.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from typing_extensions import override

from fanout_tx.config import RedisConfig, WebhooksConfig
from fanout_tx.router import Router
from fanout_tx.webhooks.client import IWebhookClient, WebhookClient, make_pool, trust_root
from fanout_tx.webhooks.delivery import DeliveryEngine
from fanout_tx.webhooks.model import NewSubscription, Subscription
from fanout_tx.webhooks.redis_store import RedisStore, connect
from fanout_tx.webhooks.signing import generate_secret
from fanout_tx.webhooks.ssrf import (
    AddressPolicy,
    RefusedTargetError,
    Resolver,
    Vetter,
    parse_url,
    threaded_resolver,
)
from fanout_tx.webhooks.store import IWebhookStore, MemoryStore
from fanout_tx.webhooks.subscriber import WebhookSubscriber, render_request


class RegistrationError(ValueError):
    """A subscription could not be created; ``str()`` is the reason for the 400."""


class WebhookService(Service):
    """``engine`` is public for metrics: ``engine.attempts`` (success/failure counts) and
    ``engine.dead_letters``."""

    _log = Logger()

    def __init__(self, router: Router, engine: DeliveryEngine, store: IWebhookStore,
                 client: IWebhookClient, vetter: Vetter, verify: bool,
                 closers: tuple[Any, ...] = ()) -> None:
        self._router = router
        self.engine = engine
        self._store = store
        self._client = client
        self._vetter = vetter
        self._verify = verify
        self._closers = closers
        self._subscribers: dict[str, WebhookSubscriber] = {}
        self.loaded: Deferred[None] = Deferred()
        engine.on_gone = self.gone
        router.add_renderer("http-request", render_request)

    # -- life -----------------------------------------------------------------------------

    @override
    def startService(self) -> None:
        super().startService()
        self.loaded = Deferred()
        load = Deferred.fromCoroutine(self._load())
        load.addErrback(lambda f: self._log.failure("could not load webhook subscriptions", f))
        load.chainDeferred(self.loaded)

    async def _load(self) -> None:
        state = await self._store.load()
        for subscription in state.subscriptions:
            self._activate(subscription)
        for delivery in state.deliveries:
            self.engine.restore(delivery)
        self._log.info("webhooks: {subs} subscriptions, {pending} pending deliveries loaded",
                       subs=len(state.subscriptions), pending=len(state.deliveries))

    @override
    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.engine.stop()
        for subscriber in self._subscribers.values():
            self._router.unsubscribe_all(subscriber)
        self._subscribers.clear()
        closing = [self._store.close()] + [close() for close in self._closers]
        return DeferredList(closing, consumeErrors=True)

    # -- the API's operations -------------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        return [s.subscription for s in self._subscribers.values()]

    def get(self, subscription_id: str) -> Subscription | None:
        subscriber = self._subscribers.get(subscription_id)
        return subscriber.subscription if subscriber is not None else None

    async def register(self, new: NewSubscription) -> Subscription:
        """Vet, verify (when asked), store, then start delivering; RegistrationError if not."""
        try:
            await self._vetter.vet(parse_url(new.url))
        except RefusedTargetError as e:
            raise RegistrationError(f"url refused: {e}") from None
        verify = self._verify if new.verify is None else new.verify
        if verify:
            await self._check_intent(new)
        subscription = Subscription(
            "sub_" + secrets.token_urlsafe(12), new.url, new.channels,
            new.secret or generate_secret(), new.headers,
        )
        await self._store.save_subscription(subscription)
        self._activate(subscription)
        self._log.info("webhook subscription {id} created for {url} on {channels}",
                       id=subscription.id, url=subscription.url,
                       channels=",".join(subscription.channels))
        return subscription

    async def _check_intent(self, new: NewSubscription) -> None:
        challenge = secrets.token_urlsafe(24)
        url = parse_url(new.url).joined("", f"webhook.challenge={challenge}")
        outcome = await self._client.request("GET", url, new.headers, b"")
        if outcome.status is None:
            raise RegistrationError(f"verification failed: {outcome.error}")
        if not outcome.ok:
            raise RegistrationError(f"verification failed: the callback answered {outcome.status}")
        if outcome.body.strip() != challenge.encode("ascii"):
            raise RegistrationError(
                "verification failed: the callback's answer did not echo the challenge"
            )

    async def remove(self, subscription_id: str) -> bool:
        subscriber = self._subscribers.pop(subscription_id, None)
        if subscriber is None:
            return False
        self._router.unsubscribe_all(subscriber)
        self.engine.close(subscription_id)
        await self._store.delete_subscription(subscription_id)
        self._log.info("webhook subscription {id} removed", id=subscription_id)
        return True

    def dead_letters(self, subscription_id: str) -> Deferred[list[dict]]:
        return self._store.dead_letters(subscription_id)

    def gone(self, subscription_id: str) -> None:
        """The endpoint answered 410: the subscription is removed (the engine's on_gone)."""
        self._log.info("webhook subscription {id} answered 410 Gone", id=subscription_id)
        removal = Deferred.fromCoroutine(self.remove(subscription_id))
        removal.addErrback(lambda f: self._log.failure("removing {id} failed", f,
                                                       id=subscription_id))

    def _activate(self, subscription: Subscription) -> None:
        subscriber = WebhookSubscriber(subscription, self.engine)
        self._subscribers[subscription.id] = subscriber
        self.engine.open(subscription)
        for channel in subscription.channels:
            self._router.subscribe(channel, subscriber)


def build_webhooks(config: WebhooksConfig, redis: RedisConfig, router: Router, reactor: Any,
                   resolver: Resolver | None = None,
                   store: IWebhookStore | None = None) -> WebhookService:
    """The transport as configured: Redis store when ``[redis] url`` is set, else memory;
    tests may pass their own resolver and store."""
    if store is None:
        store = (
            RedisStore(lambda: connect(redis.url), redis.prefix) if redis.url else MemoryStore()
        )
    vetter = Vetter(resolver or threaded_resolver(reactor), AddressPolicy(config.allow_cidrs))
    pool = make_pool(reactor, max(1, config.max_in_flight))
    client = WebhookClient(reactor, vetter, pool, config.timeout, trust_root(config.ca_file))
    engine = DeliveryEngine(reactor, client, store, config.retry_schedule, config.max_in_flight)
    return WebhookService(router, engine, store, client, vetter, config.verify,
                          closers=(pool.closeCachedConnections,))
