"""Cross-instance publish-to-delivery latency through Redis (SPEC B3).

Two fanout_tx cores (each with its own Router and RedisBus) run in one process against a
private redis-server. Instance A publishes one item at a time; the time until instance B's
subscriber has it is recorded, then the next item goes out (so this is latency, not
throughput). A second phase publishes a burst without waiting and reports the rate B
receives it at. Both instances share one reactor, so the figures include the full path:
encode, EVALSHA, XADD, XREAD wake-up, decode, router.publish on B.

    .venv/bin/python bench/redis_latency.py [--items 2000] [--burst 10000] [--unix]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import Deferred, inlineCallbacks  # noqa: E402

from fanout_tx.cluster.redis_bus import RedisBus  # noqa: E402
from fanout_tx.config.redis_url import parse_redis_url  # noqa: E402
from fanout_tx.core.items import Item, parse_item  # noqa: E402
from fanout_tx.core.router import Router  # noqa: E402
from tests.support.services import RedisServer, free_port  # noqa: E402


class Timing:
    """A subscriber that fires a Deferred when the item it is waiting for arrives."""

    formats = ("http-stream",)
    meta: dict[str, str] = {}

    def __init__(self) -> None:
        self.expected: bytes | None = None
        self.arrived: Deferred[float] | None = None
        self.count = 0

    def deliver(self, item: Item, fmt: Any, prepared: Any) -> None:
        self.count += 1
        if fmt.content == self.expected and self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            arrived.callback(time.perf_counter())

    def close(self, reason: str) -> None:
        pass

    def recover(self) -> None:
        pass


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@inlineCallbacks
def run(options: argparse.Namespace) -> Any:
    redis = RedisServer(tcp_port=0 if options.unix else free_port())
    url = redis.url if options.unix else f"redis://127.0.0.1:{redis.tcp_port}/0"
    buses = []
    try:
        for _ in range(2):
            router = Router(reactor)
            bus = RedisBus(router, reactor, parse_redis_url(url), "bench:")
            bus.startService()
            buses.append(bus)
            yield bus.when_up()
        a, b = buses
        timing = Timing()
        b.router.subscribe("bench", timing)
        payload = "x" * options.size
        latencies = []
        for n in range(options.items):
            content = f"{n}:{payload}"
            timing.expected = content.encode()
            timing.arrived = Deferred()
            arrived = timing.arrived
            start = time.perf_counter()
            a.publish([parse_item({"channel": "bench",
                                   "formats": {"http-stream": {"content": content}}})], "bench")
            end = yield arrived
            latencies.append((end - start) * 1000)
        print(f"latency over {options.items} items of {options.size} bytes "
              f"({'unix socket' if options.unix else 'tcp'}): "
              f"p50 {percentile(latencies, 0.50):.3f} ms, "
              f"p99 {percentile(latencies, 0.99):.3f} ms, "
              f"max {max(latencies):.3f} ms, mean {statistics.mean(latencies):.3f} ms")

        timing.expected = b"last"
        timing.arrived = Deferred()
        arrived = timing.arrived
        before = timing.count
        items = [parse_item({"channel": "bench", "formats": {"http-stream": {"content": "b"}}})
                 ] * (options.burst - 1)
        items.append(parse_item({"channel": "bench",
                                 "formats": {"http-stream": {"content": "last"}}}))
        failures: list[Any] = []
        start = time.perf_counter()
        for item in items:
            a.publish([item], "bench").addErrback(failures.append)
        end = yield arrived
        received = timing.count - before
        print(f"burst: {received} items published one per call reached B in "
              f"{end - start:.3f} s ({received / (end - start):,.0f} items/s); "
              f"{len(failures)} publishes failed")
    finally:
        for bus in buses:
            yield bus.stopService()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=10000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes per item")
    parser.add_argument("--unix", action="store_true", help="connect via the unix socket")
    task.react(lambda _reactor: run(parser.parse_args()))


if __name__ == "__main__":
    main()
