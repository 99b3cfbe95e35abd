"""RedisStore: the webhooks store in Redis (txredisapi), so deliveries survive a restart.

Keys, under ``[redis] prefix`` + ``webhooks:``: ``subs`` (hash id -> subscription JSON),
``pending:{id}`` (hash webhook-id -> delivery JSON), ``claim:{id}:{webhook-id}`` (string:
the token of the instance attempting it, with the lease's expiry; or ``done`` for DONE_TTL
once it was delivered or buried). Dead letters: ``dead-letters:{id}`` (sorted set of
``"{seq} {JSON}"`` scored by ``seq``, from the counter ``dead-seq``), ``dead-order`` (sorted
set of ``"{seq} {id}"``: every subscription's, oldest first) and ``dead-bytes`` (their
members' bytes together), so the oldest of all can go first past max_dead_letter_bytes.
One connection, so commands reach Redis in the order they were issued: a save followed by a
delete of the same delivery can never be applied the other way round, and a claim always
sees this instance's own earlier writes. Multi-key changes are Lua scripts, so a crash never
leaves half of one.

With several instances on one Redis each one saves the same deliveries (same webhook-ids):
a save never takes a stored delivery's attempt count backwards, never brings back a
delivery marked ``done``, and never writes under a deleted subscription, so the late copy
of an instance that saw the item after another one delivered it changes nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.transports.webhooks.model import Delivery, Subscription
from fanout_tx.transports.webhooks.shared import Claim, ISharedStore, Verdict
from fanout_tx.transports.webhooks.store import (
    DEAD_LETTERS_KEPT,
    MAX_DEAD_LETTER_BYTES,
    Dropped,
    IWebhookStore,
    StoredState,
    letter_json,
)

# A claim's lease when the caller does not say: the default attempt timeout and a margin.
DEFAULT_LEASE = 15.0

# How long a finished delivery's webhook-id stays marked ``done``: longer than any instance
# can lag behind another in seeing the same item (the Redis bus keeps ~10,000 entries).
DONE_TTL = 600

_log = Logger(namespace="fanout_tx.transports.webhooks")

# KEYS: subs. ARGV: subscription id, JSON, limit (0: none). Atomic, so instances sharing the
# store cannot together go past the limit.
_ADD_SUBSCRIPTION = """
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
        and redis.call('HLEN', KEYS[1]) >= limit then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: subs, pending, claim. ARGV: subscription id, webhook-id, JSON, attempts, token.
_SAVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local holder = redis.call('GET', KEYS[3])
if holder == 'done' then return 0 end
local stored = redis.call('HGET', KEYS[2], ARGV[2])
if stored and cjson.decode(stored)['attempts'] > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if holder == ARGV[5] then redis.call('DEL', KEYS[3]) end
return 1
"""

# KEYS: pending, claim. ARGV: webhook-id, DONE_TTL.
_FINISH = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], 'done', 'EX', ARGV[2])
"""

# KEYS: pending, dead-letters:{id}, claim, dead-order, dead-bytes, dead-seq. ARGV:
# webhook-id, dead letter JSON, kept, DONE_TTL, max bytes, subscription id, the
# dead-letters key prefix. Once only: two instances may both give up on the same delivery.
# Returns {per subscription, over bytes}: the older dead letters it pushed out. The byte cap
# removes other subscriptions' oldest too, under keys named from ARGV: fine on one Redis
# (this store does not support Redis Cluster).
_BURY = """
if redis.call('GET', KEYS[3]) == 'done' then return {0, 0} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], 'done', 'EX', ARGV[4])
local seq = redis.call('INCR', KEYS[6])
local member = seq .. ' ' .. ARGV[2]
redis.call('ZADD', KEYS[2], seq, member)
redis.call('ZADD', KEYS[4], seq, seq .. ' ' .. ARGV[6])
local total = redis.call('INCRBY', KEYS[5], #member)
local per_subscription, over_bytes = 0, 0
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[3]) do
    local oldest = redis.call('ZPOPMIN', KEYS[2])
    redis.call('ZREM', KEYS[4], oldest[2] .. ' ' .. ARGV[6])
    total = redis.call('DECRBY', KEYS[5], #oldest[1])
    per_subscription = per_subscription + 1
end
while total > tonumber(ARGV[5]) do
    local head = redis.call('ZPOPMIN', KEYS[4])
    if #head == 0 then break end
    local old_seq, owner = string.match(head[1], '^(%d+) (.+)$')
    local key = ARGV[7] .. owner
    for _, letter in ipairs(redis.call('ZRANGEBYSCORE', key, old_seq, old_seq)) do
        redis.call('ZREM', key, letter)
        total = redis.call('DECRBY', KEYS[5], #letter)
    end
    over_bytes = over_bytes + 1
end
return {per_subscription, over_bytes}
"""

# KEYS: subs, pending, claim. ARGV: subscription id, webhook-id, attempts, token, lease ms.
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {'unsubscribed'} end
local holder = redis.call('GET', KEYS[3])
if holder == 'done' then return {'done'} end
if holder and holder ~= ARGV[4] then return {'busy', redis.call('PTTL', KEYS[3])} end
local stored = redis.call('HGET', KEYS[2], ARGV[2])
if not stored then return {'done'} end
if cjson.decode(stored)['attempts'] ~= tonumber(ARGV[3]) then return {'moved', stored} end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
return {'claimed'}
"""

# KEYS: claim. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""

# KEYS: subs, pending, dead-letters:{id}, dead-order, dead-bytes. ARGV: subscription id.
_DELETE_SUBSCRIPTION = """
redis.call('HDEL', KEYS[1], ARGV[1])
local letters = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local freed = 0
for i = 1, #letters, 2 do
    freed = freed + #letters[i]
    redis.call('ZREM', KEYS[4], letters[i + 1] .. ' ' .. ARGV[1])
end
if freed > 0 then redis.call('DECRBY', KEYS[5], freed) end
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


def warn_if_webhooks_elsewhere(bus: Any, prefix: str) -> Deferred[None]:
    """On an instance with ``[webhooks]`` off: once ``bus`` (the Redis bus) is up, warn when
    instances sharing ``prefix`` keep webhook subscriptions. Only instances with webhooks
    on store deliveries, so an item published through this one while none of them runs is
    never delivered to a webhook (docs/webhooks.rst)."""

    def count(_: object) -> Deferred[Any]:
        return bus.command("HLEN", prefix + "webhooks:subs")

    def warn(subscriptions: Any) -> None:
        if int(subscriptions):
            _log.warn(
                "[webhooks] is off here but {count} webhook subscriptions are in Redis: items "
                "published through this instance miss them while no instance with webhooks "
                "on is running; turn webhooks on in every instance", count=int(subscriptions))

    def failed(failure: Any) -> None:
        _log.info("could not count webhook subscriptions: {reason}",
                  reason=failure.getErrorMessage())

    return bus.when_up().addCallback(count).addCallbacks(warn, failed)


@implementer(IWebhookStore, ISharedStore)
class RedisStore:
    """``connect`` is called on first use (start-up's ``load``), so building the service tree
    connects to nothing. ``lease`` is how long a claim lasts: one attempt's timeout and a
    margin. The claims live here, not in a store of their own, because they must share the
    connection (and so the order) of the writes they guard."""

    def __init__(self, connect: Callable[[], Any], prefix: str,
                 lease: float = DEFAULT_LEASE,
                 max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES) -> None:
        self._connect = connect
        self._max_dead_bytes = max_dead_letter_bytes
        self._connection: Any = None
        self._prefix = prefix + "webhooks:"
        self._lease_ms = max(1, int(lease * 1000))
        # This process's name in claims: a restarted instance is another claimant.
        self.token = secrets.token_hex(8)

    @property
    def _redis(self) -> Any:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _load(self) -> StoredState:
        state = StoredState(await self._subscriptions())
        for subscription in state.subscriptions:
            state.deliveries.extend(await self._pending(subscription.id))
        return state

    def load(self) -> Deferred[StoredState]:
        return Deferred.fromCoroutine(self._load())

    async def _subscriptions(self) -> list[Subscription]:
        stored = await self._redis.hgetall(self._key("subs"))
        return [Subscription.from_json(v) for v in stored.values()]

    def subscriptions(self) -> Deferred[list[Subscription]]:
        return Deferred.fromCoroutine(self._subscriptions())

    async def _pending(self, subscription_id: str) -> list[Delivery]:
        pending = await self._redis.hgetall(self._key("pending", subscription_id))
        return [Delivery.from_json(v) for v in pending.values()]

    def pending(self, subscription_id: str) -> Deferred[list[Delivery]]:
        return Deferred.fromCoroutine(self._pending(subscription_id))

    def save_subscription(self, subscription: Subscription, limit: int = 0) -> Deferred[bool]:
        saving = self._redis.execute_command(
            "EVAL", _ADD_SUBSCRIPTION, 1, self._key("subs"), subscription.id,
            subscription.to_json(), limit)
        return saving.addCallback(lambda added: bool(int(added)))

    def delete_subscription(self, subscription_id: str) -> Deferred[Any]:
        keys = (
            self._key("subs"), self._key("pending", subscription_id),
            self._key("dead-letters", subscription_id), self._key("dead-order"),
            self._key("dead-bytes"),
        )
        return self._redis.execute_command("EVAL", _DELETE_SUBSCRIPTION, len(keys), *keys,
                                           subscription_id)

    def _delivery_keys(self, subscription_id: str, webhook_id: str) -> tuple[str, str, str]:
        return (self._key("subs"), self._key("pending", subscription_id),
                self._key("claim", subscription_id, webhook_id))

    def save_delivery(self, delivery: Delivery) -> Deferred[Any]:
        """Saves (see the module's rules) and ends this instance's claim on it."""
        keys = self._delivery_keys(delivery.subscription_id, delivery.webhook_id)
        return self._redis.execute_command(
            "EVAL", _SAVE, 3, *keys, delivery.subscription_id, delivery.webhook_id,
            delivery.to_json(), delivery.attempts, self.token,
        )

    def delete_delivery(self, subscription_id: str, webhook_id: str) -> Deferred[Any]:
        _subs, pending, claim = self._delivery_keys(subscription_id, webhook_id)
        return self._redis.execute_command("EVAL", _FINISH, 2, pending, claim, webhook_id,
                                           DONE_TTL)

    def bury(self, delivery: Delivery) -> Deferred[Dropped]:
        subscription_id = delivery.subscription_id
        _subs, pending, claim = self._delivery_keys(subscription_id, delivery.webhook_id)
        keys = (pending, self._key("dead-letters", subscription_id), claim,
                self._key("dead-order"), self._key("dead-bytes"), self._key("dead-seq"))
        burying = self._redis.execute_command(
            "EVAL", _BURY, len(keys), *keys, delivery.webhook_id,
            letter_json(delivery.dead_letter()), DEAD_LETTERS_KEPT, DONE_TTL,
            self._max_dead_bytes, subscription_id, self._key("dead-letters", ""),
        )
        return burying.addCallback(lambda counts: Dropped(*(int(n) for n in counts)))

    # -- shared (ISharedStore) -----------------------------------------------------------

    async def _claim(self, delivery: Delivery) -> Claim:
        keys = self._delivery_keys(delivery.subscription_id, delivery.webhook_id)
        reply = await self._redis.execute_command(
            "EVAL", _CLAIM, 3, *keys, delivery.subscription_id, delivery.webhook_id,
            delivery.attempts, self.token, self._lease_ms,
        )
        verdict = Verdict(reply[0])
        if verdict is Verdict.BUSY:
            return Claim(verdict, wait=max(0, int(reply[1])) / 1000.0)
        if verdict is Verdict.MOVED:
            return Claim(verdict, stored=Delivery.from_json(reply[1]))
        return Claim(verdict)

    def claim(self, delivery: Delivery) -> Deferred[Claim]:
        return Deferred.fromCoroutine(self._claim(delivery))

    def release(self, delivery: Delivery) -> Deferred[Any]:
        claim = self._key("claim", delivery.subscription_id, delivery.webhook_id)
        return self._redis.execute_command("EVAL", _RELEASE, 1, claim, self.token)

    async def _dead_letters(self, subscription_id: str) -> list[dict]:
        rows = await self._redis.zrevrange(self._key("dead-letters", subscription_id), 0, -1)
        return [json.loads(row.partition(" ")[2]) for row in rows]

    def dead_letters(self, subscription_id: str) -> Deferred[list[dict]]:
        return Deferred.fromCoroutine(self._dead_letters(subscription_id))

    def close(self) -> Deferred[Any]:
        connection, self._connection = self._connection, None
        return connection.disconnect() if connection is not None else succeed(None)
