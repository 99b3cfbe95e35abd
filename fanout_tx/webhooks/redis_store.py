"""RedisStore: the webhooks store in Redis (txredisapi), so deliveries survive a restart.

Keys, under ``[redis] prefix`` + ``webhooks:``: ``subs`` (hash id -> subscription JSON),
``pending:{id}`` (hash webhook-id -> delivery JSON), ``dead:{id}`` (list, newest first).
One connection, so commands reach Redis in the order they were issued: a save followed by a
delete of the same delivery can never be applied the other way round. Multi-key changes are
Lua scripts, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from fanout_tx.redis_url import parse_redis_url
from fanout_tx.webhooks.model import Delivery, Subscription
from fanout_tx.webhooks.store import DEAD_LETTERS_KEPT, IWebhookStore, StoredState

_BURY = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
"""

_DELETE_SUBSCRIPTION = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
"""


def connect(url: str) -> Any:
    """A lazy txredisapi connection (commands wait for it, and for reconnections)."""
    address = parse_redis_url(url)
    credentials = {"dbid": address.db, "password": address.password,
                   "username": address.username, "reconnect": True, "connectTimeout": 3}
    if address.path:
        return txredisapi.lazyUnixConnection(address.path, **credentials)
    return txredisapi.lazyConnection(address.host, address.port, **credentials)


@implementer(IWebhookStore)
class RedisStore:
    """``connect`` is called on first use (start-up's ``load``), so building the service tree
    connects to nothing."""

    def __init__(self, connect: Callable[[], Any], prefix: str) -> None:
        self._connect = connect
        self._connection: Any = None
        self._prefix = prefix + "webhooks:"

    @property
    def _redis(self) -> Any:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _load(self) -> StoredState:
        subscriptions = await self._redis.hgetall(self._key("subs"))
        state = StoredState([Subscription.from_json(v) for v in subscriptions.values()])
        for subscription_id in subscriptions:
            pending = await self._redis.hgetall(self._key("pending", subscription_id))
            state.deliveries.extend(Delivery.from_json(v) for v in pending.values())
        return state

    def load(self) -> Deferred[StoredState]:
        return Deferred.fromCoroutine(self._load())

    def save_subscription(self, subscription: Subscription) -> Deferred[Any]:
        return self._redis.hset(self._key("subs"), subscription.id, subscription.to_json())

    def delete_subscription(self, subscription_id: str) -> Deferred[Any]:
        keys = (
            self._key("subs"), self._key("pending", subscription_id),
            self._key("dead", subscription_id),
        )
        return self._redis.execute_command("EVAL", _DELETE_SUBSCRIPTION, 3, *keys, subscription_id)

    def save_delivery(self, delivery: Delivery) -> Deferred[Any]:
        key = self._key("pending", delivery.subscription_id)
        return self._redis.hset(key, delivery.webhook_id, delivery.to_json())

    def delete_delivery(self, subscription_id: str, webhook_id: str) -> Deferred[Any]:
        return self._redis.hdel(self._key("pending", subscription_id), webhook_id)

    def bury(self, delivery: Delivery) -> Deferred[Any]:
        keys = (
            self._key("pending", delivery.subscription_id),
            self._key("dead", delivery.subscription_id),
        )
        return self._redis.execute_command(
            "EVAL", _BURY, 2, *keys, delivery.webhook_id, json.dumps(delivery.dead_letter()),
            DEAD_LETTERS_KEPT,
        )

    async def _dead_letters(self, subscription_id: str) -> list[dict]:
        rows = await self._redis.lrange(self._key("dead", subscription_id), 0, -1)
        return [json.loads(row) for row in rows]

    def dead_letters(self, subscription_id: str) -> Deferred[list[dict]]:
        return Deferred.fromCoroutine(self._dead_letters(subscription_id))

    def close(self) -> Deferred[Any]:
        connection, self._connection = self._connection, None
        return connection.disconnect() if connection is not None else succeed(None)
