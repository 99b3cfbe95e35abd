"""WebhookService: the webhooks transport's life (load, register, remove, stop).

It owns the subscriptions: each one is a WebhookSubscriber on the router for each of its
channels and a queue in the delivery engine. Registration vets the URL (SSRF) and, when
asked, checks intent with a challenge before anything is stored. With a shared store
(Redis) it re-reads the stored subscriptions every few seconds, so subscriptions created or
deleted through another instance are picked up. Stopping drains the engine within the
shutdown timeout before the store's connection closes.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from typing_extensions import override

from fanout_tx._reactor import IResolvingReactor
from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.router import Router
from fanout_tx.ops.logs import url_for_log
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.webhooks.client import (
    IWebhookClient,
    WebhookClient,
    trust_root,
)
from fanout_tx.transports.webhooks.delivery import DeliveryEngine
from fanout_tx.transports.webhooks.model import NewSubscription, Subscription
from fanout_tx.transports.webhooks.redis_store import RedisStore, connect
from fanout_tx.transports.webhooks.shared import ISharedStore
from fanout_tx.transports.webhooks.signing import generate_secret
from fanout_tx.transports.webhooks.ssrf import (
    AddressPolicy,
    RefusedTargetError,
    Resolver,
    Vetter,
    parse_url,
    threaded_resolver,
)
from fanout_tx.transports.webhooks.store import IWebhookStore, MemoryStore
from fanout_tx.transports.webhooks.subscriber import WebhookSubscriber, render_request

# Of ``[runner] shutdown_timeout``: the share running attempts get to finish at shutdown,
# then the share their outcomes (and released claims) get to reach the store; the rest is
# slack before the root gives up waiting.
DRAIN_ATTEMPTS_SHARE = 0.8
DRAIN_WRITES_SHARE = 0.15

# How often subscriptions created or deleted through other instances are looked for.
SYNC_INTERVAL = 5.0

# A claim's lease beyond the attempt timeout: time to store the outcome, which ends it.
LEASE_MARGIN = 5.0


class RegistrationError(ValueError):
    """A subscription could not be created; ``str()`` is the reason for the 400."""


class SubscriptionLimitError(RegistrationError):
    """``max_subscriptions`` are stored already; ``str()`` is the reason for the 409."""


class WebhookService(Service):
    """``engine`` is public for metrics: ``engine.attempts`` (success/failure counts) and
    ``engine.dead_letters``."""

    _log = Logger()

    def __init__(self, router: Router, engine: DeliveryEngine, store: IWebhookStore,
                 client: IWebhookClient, vetter: Vetter, verify: bool, clock: IReactorTime,
                 closers: tuple[Any, ...] = (), shutdown_timeout: float = 10.0,
                 sync_interval: float = SYNC_INTERVAL,
                 max_subscriptions: int = WebhooksConfig.max_subscriptions) -> None:
        self._router = router
        self._max_subscriptions = max_subscriptions
        self.engine = engine
        self._store = store
        self._client = client
        self._vetter = vetter
        self._verify = verify
        self._closers = closers
        self._shutdown_timeout = shutdown_timeout
        self._subscribers: dict[str, WebhookSubscriber] = {}
        # Removed through this instance; a sync that read them just before must not revive
        # them (ids are random, never reused).
        self._removed: set[str] = set()
        self._shared = store if ISharedStore.providedBy(store) else None
        self._sync_loop: LoopingCall | None = None
        if self._shared is not None:
            self._sync_loop = LoopingCall(self.sync)
            self._sync_loop.clock = clock
        self._sync_interval = sync_interval
        self.loaded: Deferred[None] = Deferred()
        engine.on_gone = self.gone
        engine.on_unsubscribed = self._deactivate
        router.add_renderer("http-request", render_request)

    # -- life -----------------------------------------------------------------------------

    @override
    def startService(self) -> None:
        super().startService()
        self.loaded = Deferred()
        load = Deferred.fromCoroutine(self._load())
        load.addErrback(lambda f: self._log.failure("could not load webhook subscriptions", f))
        # After the load, or after it failed: the syncs then pick up what it could not.
        load.addCallback(lambda _: self._start_sync())
        load.chainDeferred(self.loaded)

    def _start_sync(self) -> None:
        if self._sync_loop is not None and self.running and not self._sync_loop.running:
            self._sync_loop.start(self._sync_interval, now=False)

    async def _load(self) -> None:
        state = await self._store.load()
        for subscription in state.subscriptions:
            self._activate(subscription)
        for delivery in state.deliveries:
            self.engine.restore(delivery)
        self._log.info("webhooks: {subs} subscriptions, {pending} pending deliveries loaded",
                       subs=len(state.subscriptions), pending=len(state.deliveries))

    def sync(self) -> Deferred[None]:
        """Pick up subscriptions created (with their pending deliveries) or deleted through
        other instances sharing the store. Errors are logged: the next sync tries again."""
        return Deferred.fromCoroutine(self._sync())

    async def _sync(self) -> None:
        assert self._shared is not None
        try:
            stored = await self._shared.subscriptions()
            for subscription_id in set(self._subscribers) - {s.id for s in stored}:
                self._deactivate(subscription_id)
            for subscription in stored:
                if not self.running:
                    return  # stopped while waiting for Redis
                if subscription.id in self._subscribers or subscription.id in self._removed:
                    continue
                self._activate(subscription)
                self._log.info("webhook subscription {id} was created by another instance",
                               id=subscription.id)
                for delivery in await self._shared.pending(subscription.id):
                    self.engine.restore(delivery)
        except Exception as e:  # Redis away, or an unreadable entry: the loop must go on
            if self.running:
                self._log.warn("webhooks: could not sync subscriptions: {error}", error=e)

    @override
    def stopService(self) -> Deferred[Any]:
        """No new deliveries, running attempts may finish (engine.drain), then close."""
        super().stopService()
        if self._sync_loop is not None and self._sync_loop.running:
            self._sync_loop.stop()
        for subscriber in self._subscribers.values():
            self._router.unsubscribe_all(subscriber)
        self._subscribers.clear()
        timeout = self._shutdown_timeout
        return Deferred.fromCoroutine(self._stop(
            timeout * DRAIN_ATTEMPTS_SHARE, timeout * DRAIN_WRITES_SHARE))

    async def _stop(self, attempts_timeout: float, writes_timeout: float) -> None:
        await self.engine.drain(attempts_timeout, writes_timeout)
        closing = [self._store.close()] + [close() for close in self._closers]
        await DeferredList(closing, consumeErrors=True)

    # -- the API's operations -------------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        return [s.subscription for s in self._subscribers.values()]

    def get(self, subscription_id: str) -> Subscription | None:
        subscriber = self._subscribers.get(subscription_id)
        return subscriber.subscription if subscriber is not None else None

    async def register(self, new: NewSubscription) -> Subscription:
        """Vet, verify (when asked), store, then start delivering; RegistrationError if not.

        The limit is checked first, so a full instance sends no challenge, and again when
        storing: the store's count (shared by every instance on one Redis) decides."""
        if len(self._subscribers) >= self._max_subscriptions:
            raise self._full()
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
        if not await self._store.save_subscription(subscription, self._max_subscriptions):
            raise self._full()
        self._activate(subscription)
        subscriber = self._subscribers.get(subscription.id)
        if subscriber is not None:  # the backlog first (docs/reliability.rst)
            for channel in subscription.channels:
                subscriber.replay.start(self._router.history, channel, new.since, new.rewind,
                                        subscriber.send_item)
        self._log.info("webhook subscription {id} created for {url} on {channels}",
                       id=subscription.id, url=url_for_log(subscription.url, path=False),
                       channels=",".join(subscription.channels))
        return subscription

    def _full(self) -> SubscriptionLimitError:
        return SubscriptionLimitError(
            f"subscription limit reached ({self._max_subscriptions}, [webhooks] "
            "max_subscriptions): delete one first")

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
        self._removed.add(subscription_id)
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

    def _deactivate(self, subscription_id: str) -> None:
        """Deleted elsewhere (another instance's API): stop delivering, touch no store."""
        subscriber = self._subscribers.pop(subscription_id, None)
        if subscriber is not None:
            self._router.unsubscribe_all(subscriber)
            self.engine.close(subscription_id)
            self._log.info("webhook subscription {id} was deleted by another instance",
                           id=subscription_id)

    def _activate(self, subscription: Subscription) -> None:
        if subscription.id in self._subscribers:
            return  # a sync read it between this instance's store write and activation
        subscriber = WebhookSubscriber(subscription, self.engine)
        self._subscribers[subscription.id] = subscriber
        self.engine.open(subscription)
        for channel in subscription.channels:
            self._router.subscribe(channel, subscriber)


def build_webhooks(config: WebhooksConfig, redis: RedisConfig, router: Router,
                   reactor: IResolvingReactor, pool: OriginClient,
                   resolver: Resolver | None = None,
                   store: IWebhookStore | None = None,
                   shutdown_timeout: float = 10.0,
                   sync_interval: float = SYNC_INTERVAL) -> WebhookService:
    """The transport as configured: Redis store when ``[redis] url`` is set, else memory;
    tests may pass their own resolver and store. A store that also provides claims (Redis)
    makes each attempt claimed first, so several instances send it once. ``pool`` is
    tap.py's ``OriginClients.vetted``: each request brings the address it vetted."""
    if store is None:
        store = (
            RedisStore(lambda: connect(redis.url), redis.prefix,
                       lease=config.timeout + LEASE_MARGIN,
                       max_dead_letter_bytes=config.max_dead_letter_bytes)
            if redis.url else MemoryStore(config.max_dead_letter_bytes)
        )
    vetter = Vetter(resolver or threaded_resolver(reactor), AddressPolicy(config.allow_cidrs))
    client = WebhookClient(reactor, vetter, pool, config.timeout, trust_root(config.ca_file))
    claims = store if ISharedStore.providedBy(store) else None
    engine = DeliveryEngine(reactor, client, store, config.retry_schedule, config.max_in_flight,
                            claims=claims, max_pending=config.max_pending,
                            max_pending_bytes=config.max_pending_bytes,
                            max_pending_bytes_total=config.max_pending_bytes_total)
    return WebhookService(router, engine, store, client, vetter, config.verify,
                          closers=(pool.closeCachedConnections,),
                          shutdown_timeout=shutdown_timeout, clock=reactor,
                          sync_interval=sync_interval,
                          max_subscriptions=config.max_subscriptions)
