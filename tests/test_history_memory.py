"""The in-memory history holds ``[history] max_bytes``: 100k channels x 10 items each, in a
fresh interpreter, grow its RSS by no more than the cap plus a stated overhead."""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import TestCase

MAX_BYTES = 64 * 1024 * 1024
# Beyond the cap: the interpreter's free lists and arenas left by the million items that
# went through (freed, not returned to the OS), the order queue's spare blocks, and the
# allocator's rounding. Stated in docs/reliability.rst.
OVERHEAD = 24 * 1024 * 1024

CHILD = r"""
import json, sys
from twisted.internet.task import Clock
from fanout_tx.core.formats import Format
from fanout_tx.core.history import MemoryHistory
from fanout_tx.core.items import Item

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

max_bytes = int(sys.argv[1])
history = MemoryHistory(Clock(), max_items=10, max_age=0, max_bytes=max_bytes)
channels = [f"channel-{n}" for n in range(100_000)]
before = rss()
number = 0
for round_ in range(10):
    for channel in channels:
        number += 1
        # Item() through its frozen-dataclass __init__ costs seconds for a million; the
        # object is the same either way.
        fmt = Format.__new__(Format)
        fmt.__dict__.update(name="http-stream", action="send", content=b"payload %d" % number,
                            fields={}, content_filters=())
        item = Item.__new__(Item)
        item.__dict__.update(channel=channel, formats={"http-stream": fmt}, id=f"i{number}",
                             prev_id=None, no_seq=False, meta={}, share_key=None,
                             remote=False)
        history.record(item)
print(json.dumps({"growth": rss() - before, "bytes": history.bytes, "count": history.count,
                  "evicted": history.evicted, "channels": len(history._channels)}))
"""


class HistoryMemoryTests(TestCase):
    def test_rss_within_max_bytes(self) -> None:
        """A million items over 100k channels: the store evicts oldest first, keeps its
        count within max_bytes, and the process grows by less than max_bytes + overhead."""
        out = subprocess.run([sys.executable, "-c", CHILD, str(MAX_BYTES)], check=True,
                             capture_output=True, timeout=120).stdout
        result = json.loads(out)
        self.assertLessEqual(result["bytes"], MAX_BYTES)
        self.assertGreater(result["evicted"], 900_000)
        self.assertGreater(result["count"], 40_000)
        self.assertLess(result["growth"], MAX_BYTES + OVERHEAD, result)
