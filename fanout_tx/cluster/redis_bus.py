"""RedisBus: several instances share every publish through one Redis stream (SPEC B3).

Each publish is delivered to this instance's router first, then appended to the stream
``<prefix>items`` together with the per-channel last ids (``<prefix>last-ids``), atomically,
by one Lua script. Every instance reads the stream from its own cursor with a blocking
XREAD on a second connection and feeds the other instances' entries to its router, so each
router sees every item once, in stream order, and does de-duplication and sequencing itself.
Why a stream rather than pub/sub, and what is lost when Redis or an instance restarts, is in
docs/redis.rst.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ResponseError
from zope.interface import implementer

from fanout_tx._reactor import IConnectingReactor
from fanout_tx.cluster.redis_link import RedisLink, redis_endpoint
from fanout_tx.config.redis_url import RedisAddress
from fanout_tx.core.bus import BusUnavailableError, ItemSink
from fanout_tx.core.codecs.item_codec import ItemCodecError, decode_items, encode_items
from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import Item

# KEYS: stream, last-ids hash, last-ids order (zset), entry counter.
# ARGV: origin, payload, stream max length, max last ids, then channel/id pairs.
# The counter numbers entries without holes, so a reader notices trimmed entries it never
# read. The order zset keeps the hash bounded like the router's own map: oldest out first.
PUBLISH_SCRIPT = """
local number = redis.call('INCR', KEYS[4])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
                      'o', ARGV[1], 's', number, 'd', ARGV[2])
if #ARGV > 4 then
  local ms = tonumber(string.match(id, '^(%d+)'))
  for i = 5, #ARGV, 2 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[3], ms, ARGV[i])
  end
  local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', KEYS[3], excess)
    for j = 1, #oldest, 2 do redis.call('HDEL', KEYS[2], oldest[j]) end
  end
end
return id
"""

# KEYS: stream, last-ids hash, entry counter. ARGV: this reader's cursor ('' at first).
# Returns {mode, stream id to read after, [flat last-ids hash, [entry count]]}, atomically,
# so the last ids and the read position agree: start (late joiner: no history), resume
# (read on from the cursor; entries trimmed meanwhile show as a hole in the entry numbers),
# reset (the cursor is beyond the stream's end: Redis restarted or was flushed, so every
# entry in it is unseen).
SNAPSHOT_SCRIPT = """
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local cursor = ARGV[1]
if cursor == '' then
  return {'start', last, redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[3]) or '0'}
end
if after(cursor, last) then return {'reset', '0-0', redis.call('HGETALL', KEYS[2])} end
return {'resume', cursor}
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _with_share_keys(items: Sequence[Item]) -> Sequence[Item]:
    """``items`` with a share key on each one without an id: one random batch name plus
    the item's place in the batch (one uuid per publish, not per item)."""
    if all(item.id is not None for item in items):
        return items
    batch = uuid.uuid4().hex
    return [item if item.id is not None else replace(item, share_key=f"{batch}.{index}")
            for index, item in enumerate(items)]


@implementer(IBus)
class RedisBus(MultiService):
    """IBus over Redis, and the service that owns its two connections (``commands`` for
    publishing and health pings, ``reader`` for the blocking stream read)."""

    _log = Logger()

    def __init__(
        self,
        router: ItemSink,
        reactor: IConnectingReactor,
        address: RedisAddress,
        prefix: str = "fanout_tx:",
        stream_maxlen: int = 10_000,
        max_last_ids: int = 100_000,
        block_seconds: float = 1.0,
        read_count: int = 1000,
        reply_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        self.router = router
        self._stream = prefix + "items"
        self._last_ids_key = prefix + "last-ids"
        self._last_ids_order_key = prefix + "last-ids:order"
        self._counter_key = prefix + "items:count"
        self._stream_maxlen = stream_maxlen
        self._max_last_ids = max_last_ids
        self._block_ms = int(block_seconds * 1000)
        self._read_count = read_count
        self.origin = uuid.uuid4().hex
        self._origin = self.origin.encode("ascii")
        # Channels with an own publish (with an id) not yet answered by Redis: a snapshot
        # of last ids taken meanwhile may predate it, so it does not overwrite them.
        self._in_flight: Counter[str] = Counter()
        self._cursor: str | None = None
        self._next_number: int | None = None  # the entry number expected next, once known
        self._publish_sha = ""
        self._read_generation = 0
        self._waiters: list[tuple[bool, Deferred[None]]] = []
        self._was_up = False
        self.received_items = 0
        self.rejected = 0  # stream entries or items dropped, for fanout_publish_errors_total
        self._commands = RedisLink(
            "commands", redis_endpoint(reactor, address), reactor, address,
            prepare=self._load_script, on_up=self._state_changed,
            on_down=self._state_changed, reply_timeout=reply_timeout,
        )
        self._reader = RedisLink(
            "reader", redis_endpoint(reactor, address), reactor, address,
            prepare=self._snapshot, on_up=self._reader_up, on_down=self._state_changed,
            ping_interval=None, reply_timeout=reply_timeout,
        )
        self._commands.setName("commands")
        self._commands.setServiceParent(self)
        self._reader.setName("reader")
        self._reader.setServiceParent(self)

    def command(self, *args: Any) -> Deferred[Any]:
        """One command on the publishing connection; fails while Redis is unreachable."""
        return self._commands.command(*args)

    # -- state ------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while items are both shared and received (for health and metrics)."""
        return self._commands.up and self._reader.up

    @property
    def state(self) -> str:
        return "up" if self.up else "down"

    def when_up(self) -> Deferred[None]:
        return self._when(True)

    def when_down(self) -> Deferred[None]:
        return self._when(False)

    def _when(self, up: bool) -> Deferred[None]:
        if self.up == up:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((up, waiter))
        return waiter

    def _state_changed(self) -> None:
        up = self.up
        if up == self._was_up:
            return
        self._was_up = up
        if up:
            self._log.info("redis bus up: sharing items with other instances")
        elif self.running:
            self._log.warn("redis bus down: items reach this instance's subscribers only")
        ready = [w for w in self._waiters if w[0] == up]
        self._waiters = [w for w in self._waiters if w[0] != up]
        for _up, waiter in ready:
            waiter.callback(None)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, items: Sequence[Item], input_name: str) -> Deferred[None]:
        """Deliver locally, then share; fails with BusUnavailableError when the items could
        not be shared (they still reached this instance's subscribers)."""
        items = _with_share_keys(items)
        for item in items:
            self.router.publish(item)
        if not items:
            return succeed(None)
        if not self._commands.up:
            return fail(BusUnavailableError("Redis is unreachable; items reached this "
                                            "instance only"))
        try:
            payload = encode_items(items)
        except ItemCodecError as e:
            self._log.error("cannot share items from {input}: {error}", input=input_name,
                            error=str(e))
            return fail(e)
        pairs = [(item.channel, item.id) for item in items if item.id is not None]
        channels = [channel for channel, _item_id in pairs]
        self._in_flight.update(channels)
        args: list[Any] = [
            self._stream, self._last_ids_key, self._last_ids_order_key, self._counter_key,
            self._origin, payload, self._stream_maxlen, self._max_last_ids,
        ]
        for channel, item_id in pairs:
            args += (channel, item_id)
        shared = self._commands.command("EVALSHA", self._publish_sha, 4, *args)
        shared.addBoth(self._answered, channels)
        return shared.addCallbacks(lambda _: None, self._share_failed,
                                   errbackArgs=(input_name,))

    def _answered(self, outcome: Any, channels: list[str]) -> Any:
        self._in_flight.subtract(channels)
        for channel in channels:
            if self._in_flight[channel] <= 0:
                del self._in_flight[channel]
        return outcome

    def _share_failed(self, failure: Failure, input_name: str) -> None:
        if failure.check(ResponseError) and "NOSCRIPT" in failure.getErrorMessage():
            self._commands.drop()  # script cache flushed: reconnecting loads it again
        self._log.warn("could not share items from {input} through Redis: {error}",
                       input=input_name, error=failure.getErrorMessage())
        raise BusUnavailableError(f"Redis did not take the items: "
                                  f"{failure.getErrorMessage()}") from failure.value

    def _load_script(self, command: Any) -> Deferred[None]:
        def loaded(sha: bytes) -> None:
            self._publish_sha = _text(sha)

        return command("SCRIPT", "LOAD", PUBLISH_SCRIPT).addCallback(loaded)

    # -- receiving --------------------------------------------------------------------------

    def _snapshot(self, command: Any) -> Deferred[None]:
        keys = (self._stream, self._last_ids_key, self._counter_key)
        return command("EVAL", SNAPSHOT_SCRIPT, len(keys), *keys, self._cursor or "").addCallback(
            self._apply_snapshot)

    def _apply_snapshot(self, reply: list[Any]) -> None:
        mode, start = _text(reply[0]), _text(reply[1])
        if mode != "resume":
            # A late joiner knows the next entry's number; after a reset it is unknown.
            self._next_number = int(reply[3]) + 1 if mode == "start" else None
            self._apply_last_ids(reply[2])
            self._log.info("redis reader: {mode}, reading after {start}; {count} last ids "
                           "loaded", mode=mode, start=start, count=len(reply[2]) // 2)
        self._cursor = start

    def _apply_last_ids(self, flat: list[bytes]) -> None:
        """Take Redis's last ids, except where an own publish is in flight (newer here)."""
        for channel, item_id in zip(flat[::2], flat[1::2], strict=True):
            if _text(channel) not in self._in_flight:
                self.router.set_last_id(_text(channel), _text(item_id))

    def _reader_up(self) -> None:
        self._read_generation += 1
        self._state_changed()
        self._read(self._read_generation)

    def _read(self, generation: int) -> None:
        if generation != self._read_generation or not self._reader.up:
            return
        reading = self._reader.command(
            "XREAD", "BLOCK", self._block_ms, "COUNT", self._read_count,
            "STREAMS", self._stream, self._cursor,
            timeout=self._block_ms / 1000 + self._reader.reply_timeout,
        )
        reading.addCallback(self._received)
        reading.addCallbacks(lambda _: self._read(generation), self._read_failed)

    def _read_failed(self, failure: Failure) -> None:
        if self._reader.up:  # an error answer, not a lost connection: start over
            self._log.failure("redis reader failed; reconnecting", failure)
            self._reader.drop()

    def _received(self, reply: list[Any] | None) -> Deferred[None] | None:
        """Hand the entries to the router; when entry numbers show a hole (entries trimmed
        before this reader got them), log it and reload the last ids before reading on."""
        missed = 0
        for _stream, entries in reply or ():
            for entry_id, flat in entries:
                self._cursor = _text(entry_id)
                try:  # one bad entry is that entry's error; the read loop goes on
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    number = int(fields[b"s"])
                    if self._next_number is not None and number > self._next_number:
                        missed += number - self._next_number
                    self._next_number = number + 1
                    self._entry(fields)
                except Exception:
                    self.rejected += 1
                    self._log.failure("dropped stream entry {id}", id=self._cursor)
        if not missed:
            return None
        self._log.warn("redis reader missed {count} entries (trimmed before it read them); "
                       "reloading last ids", count=missed)
        return self._reader.command("HGETALL", self._last_ids_key).addCallback(
            self._apply_last_ids)

    def _entry(self, fields: dict[bytes, bytes]) -> None:
        if fields.get(b"o") == self._origin:
            return  # our own publish, delivered locally before it was shared
        try:
            items = decode_items(fields[b"d"])
        except (ItemCodecError, KeyError) as e:
            self.rejected += 1
            self._log.error("undecodable stream entry {id}: {error}", id=self._cursor,
                            error=str(e))
            return
        self.received_items += len(items)
        for item in items:
            try:
                self.router.publish(replace(item, remote=True))
            except Exception:
                self.rejected += 1
                self._log.failure("dropped an item on {channel} from stream entry {id}",
                                  channel=item.channel, id=self._cursor)
