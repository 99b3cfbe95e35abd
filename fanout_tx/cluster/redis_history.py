"""Channel history in Redis (``[history]`` with ``[redis] url``): shared by every instance and
worker, and kept across restarts (docs/reliability.rst).

One stream per channel, ``<prefix>history:<channel>``, each entry the item's id and its wire
form (core/codecs/item_codec.py), trimmed by ``max_items`` on every append and by
``max_age`` (entries older than it are trimmed, the key expires when the channel goes quiet,
and reads skip them). The router records every item it delivers; the instance that accepted
a publish writes it, the others see ``item.remote`` and skip it, so each item is kept once,
in the order the accepting instance delivered it. With workers, the supervisor (which takes
every publish) writes and the workers only read (``writer=False``). Items from a ZeroMQ SUB
reach every
instance (they are not shared through Redis): the append script skips an id already among
the channel's newest entries, so each instance's copy is one entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from fanout_tx._reactor import IConnectingReactor
from fanout_tx.cluster.redis_link import RedisLink, redis_endpoint
from fanout_tx.config.redis_url import RedisAddress
from fanout_tx.core.codecs.item_codec import ItemCodecError, decode_items, encode_items
from fanout_tx.core.interfaces import IHistory
from fanout_tx.core.items import Item

# How far back the append script looks for the same id (a ZeroMQ SUB item each instance
# records): bounded, so an append stays cheap whatever max_items is.
DUPLICATE_WINDOW = 64

# KEYS: the channel's stream. ARGV: item id, payload, max items, max age in ms (0: none).
APPEND_SCRIPT = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[5])
for i = 1, #newest do
  if newest[i][2][2] == ARGV[1] then return 0 end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'i', ARGV[1], 'd', ARGV[2])
local age = tonumber(ARGV[4])
if age > 0 then
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', ms - age)
  redis.call('PEXPIRE', KEYS[1], age)
end
return 1
"""

# KEYS: the channel's stream. ARGV: max age in ms (0: none). The entries younger than it.
READ_SCRIPT = """
local start = '-'
local age = tonumber(ARGV[1])
if age > 0 then
  local t = redis.call('TIME')
  start = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age)
end
return redis.call('XRANGE', KEYS[1], start, '+')
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@implementer(IHistory)
class RedisHistory(MultiService):
    """IHistory in Redis, and the service that owns its connection."""

    _log = Logger()

    def __init__(self, reactor: IConnectingReactor, address: RedisAddress, max_items: int,
                 max_age: float = 0.0, prefix: str = "fanout_tx:",
                 reply_timeout: float = 2.0, writer: bool = True) -> None:
        super().__init__()
        self.max_items = max_items
        # False in a worker: the supervisor, which takes every publish, writes them all.
        self._writer = writer
        self._age_ms = int(max_age * 1000)
        self._prefix = prefix + "history:"
        self._append_sha = ""
        self._read_sha = ""
        self.failed = 0  # records Redis did not take (down, or an error answer)
        self._up_waiters: list[Deferred[None]] = []
        self._link = RedisLink("history", redis_endpoint(reactor, address), reactor, address,
                               prepare=self._load_scripts, on_up=self._came_up,
                               reply_timeout=reply_timeout)
        self._link.setName("link")
        self._link.setServiceParent(self)

    @property
    def up(self) -> bool:
        return self._link.up

    def when_up(self) -> Deferred[None]:
        """Fires once the connection is up and the scripts are loaded."""
        if self.up:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._up_waiters.append(waiter)
        return waiter

    def _came_up(self) -> None:
        waiters, self._up_waiters = self._up_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _load_scripts(self, command: Any) -> Deferred[None]:
        """One after the other: a failed first load (Redis still loading its data) leaves
        no second answer unhandled; the link retries the whole preparation."""
        def appending_loaded(sha: bytes) -> Deferred[None]:
            self._append_sha = _text(sha)
            return command("SCRIPT", "LOAD", READ_SCRIPT).addCallback(reading_loaded)

        def reading_loaded(sha: bytes) -> None:
            self._read_sha = _text(sha)

        return command("SCRIPT", "LOAD", APPEND_SCRIPT).addCallback(appending_loaded)

    # -- writing -------------------------------------------------------------------------

    def record(self, item: Item) -> None:
        if item.remote or not self._writer:
            return  # the instance (the supervisor) that accepted it wrote it
        try:
            payload = encode_items([item])
        except ItemCodecError as e:
            self.failed += 1
            self._log.error("cannot keep {id} on {channel} in history: {error}", id=item.id,
                            channel=item.channel, error=str(e))
            return
        writing = self._link.command(
            "EVALSHA", self._append_sha, 1, self._prefix + item.channel, item.id or "",
            payload, self.max_items, self._age_ms, DUPLICATE_WINDOW)
        writing.addErrback(self._record_failed, item)

    def _record_failed(self, failure: Failure, item: Item) -> None:
        self.failed += 1
        if self.failed == 1 or self.failed % 1000 == 0:  # a Redis outage is one line, not N
            self._log.warn("history: {count} items not kept in Redis so far (now {id} on "
                           "{channel}): {error}", count=self.failed, id=item.id,
                           channel=item.channel, error=failure.getErrorMessage())

    # -- reading -------------------------------------------------------------------------

    def _entries(self, channel: str) -> Deferred[list[tuple[str, bytes]]]:
        reading = self._link.command("EVALSHA", self._read_sha, 1, self._prefix + channel,
                                     self._age_ms)

        def parsed(reply: list[Any] | None) -> list[tuple[str, bytes]]:
            entries = []
            for _entry_id, flat in reply or ():
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                entries.append((_text(fields[b"i"]), fields[b"d"]))
            return entries

        return reading.addCallback(parsed)

    def _decode(self, entries: Sequence[tuple[str, bytes]]) -> list[Item]:
        items = []
        for _item_id, payload in entries:
            try:
                items.extend(decode_items(payload))
            except ItemCodecError as e:  # written by a newer version, or damaged
                self._log.error("history: skipped an undecodable entry: {error}",
                                error=str(e))
        return items

    def since(self, channel: str, item_id: str, limit: int) -> Deferred[list[Item] | None]:
        def found(entries: list[tuple[str, bytes]]) -> list[Item] | None:
            for index in range(len(entries) - 1, -1, -1):
                if entries[index][0] == item_id:
                    return self._decode(entries[index + 1:index + 1 + limit])
            return None

        return self._entries(channel).addCallback(found)

    def last(self, channel: str, count: int) -> Deferred[list[Item]]:
        if count <= 0:
            return succeed([])
        return self._entries(channel).addCallback(lambda e: self._decode(e[-count:]))
