"""Fan-out with operations on and off: what metrics and the stats socket cost per delivery.

Publishes through the bus as the inputs do (one ``bus.publish([item], input)`` per item),
in three set-ups, interleaved and repeated:

- off: ``LocalBus`` straight to the router;
- metrics: ``MeteredBus`` (per-input counters) in front, the Prometheus collector registered
  (scraped after each run, outside the timing: a scrape every 15 s or so costs one walk of
  the subscribers, ~0.3 us each, whatever the publish rate);
- metrics+stats: as metrics, plus the stats socket (a bound ZeroMQ PUB, one ``message``
  per item and format).

Two shapes: many subscribers per item (the per-subscriber path) and few (per-item costs
dominate). Run: ``python bench/metrics_bench.py [--repeat 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import zmq
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.task import Clock

from bench.router_bench import CountingSubscriber
from fanout_tx.core.bus import LocalBus
from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.ops.metrics import FanoutCollector, InputCounters, MeteredBus, MetricSources
from fanout_tx.ops.stats_pub import StatsPublisher, Totals


def build(mode: str, context: zmq.Context) -> tuple[Router, IBus, Callable[[], None]]:
    clock = Clock()
    router = Router(clock)
    router.add_renderer("http-stream", lambda fmt: fmt.content)
    bus: IBus = LocalBus(router)
    finish: Callable[[], None] = lambda: None  # noqa: E731
    if mode != "off":
        counters = InputCounters()
        bus = MeteredBus(bus, counters)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FanoutCollector(MetricSources(router, counters)))
        finish = lambda: generate_latest(registry) and None  # noqa: E731
    if mode == "metrics+stats":
        stats = StatsPublisher(clock, context, "tcp://127.0.0.1:*", "tnetstring", 10, router,
                               Totals(lambda: 0, router, lambda: 0))
        stats.startService()
        scrape = finish

        def finish() -> None:
            scrape()
            stats.stopService()
    return router, bus, finish


def run(mode: str, subscribers: int, items: int, context: zmq.Context) -> float:
    router, bus, finish = build(mode, context)
    subs = [CountingSubscriber() for _ in range(subscribers)]
    for sub in subs:
        router.subscribe("bench", sub)
    batch = [parse_item({"channel": "bench", "id": str(n),
                         "formats": {"http-stream": {"content": f"item {n}\n"}}})
             for n in range(items)]
    start = time.perf_counter()
    for one in batch:
        bus.publish([one], "http")
    elapsed = time.perf_counter() - start
    finish()
    if sum(s.count for s in subs) != subscribers * items:
        raise AssertionError("not every subscriber got every item")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    context = zmq.Context()
    modes = ("off", "metrics", "metrics+stats")
    for subscribers, items in ((10_000, 20), (10, 20_000)):
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_ in range(args.repeat):
            for mode in modes[round_ % 3:] + modes[:round_ % 3]:  # no mode always first
                times[mode].append(run(mode, subscribers, items, context))
        deliveries = subscribers * items
        base = deliveries / statistics.median(times["off"])
        print(f"{subscribers} subscribers x {items} items, median of {args.repeat}")
        for mode in modes:
            rate = deliveries / statistics.median(times[mode])
            print(f"  {mode:14} {rate:12,.0f} deliveries/s  {100 * (rate / base - 1):+6.1f} %")
    context.term()


if __name__ == "__main__":
    main()
