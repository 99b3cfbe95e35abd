"""Micro-benchmark: one Router fanning items out to many in-memory subscribers on one channel.

Measures the router's own per-subscriber cost (filter check, ``deliver`` call, bookkeeping)
with a trivial ``deliver`` that only counts, so transport costs are left out. Run:

    python bench/router_bench.py [--subscribers 10000] [--items 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from twisted.internet.task import Clock
from zope.interface import implementer

from fanout_tx.core.formats import Format
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import Item, parse_item
from fanout_tx.core.router import Router


@implementer(ISubscriber)
class CountingSubscriber:
    """The cheapest possible subscriber: counts deliveries."""

    formats = ("http-stream",)
    meta: dict[str, str] = {}

    def __init__(self) -> None:
        self.count = 0

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        self.count += 1

    def close(self, reason: str) -> None:
        """Nothing to close."""

    def recover(self) -> None:
        """Nothing to recover."""


def run(subscribers: int, items: int, filters: tuple[str, ...],
        meta: dict[str, str], router_class: type = Router) -> float:
    """Seconds to publish ``items`` items to ``subscribers`` subscribers."""
    router = router_class(Clock())
    router.add_renderer("http-stream", lambda fmt: fmt.content)
    subs = [CountingSubscriber() for _ in range(subscribers)]
    for sub in subs:
        router.subscribe("bench", sub, filters)
    batch = [
        parse_item({"channel": "bench", "id": str(n), "meta": meta,
                    "formats": {"http-stream": {"content": f"item {n}\n"}}})
        for n in range(items)
    ]
    start = time.perf_counter()
    for one in batch:
        router.publish(one)
    elapsed = time.perf_counter() - start
    if sum(s.count for s in subs) != subscribers * items:
        raise AssertionError("not every subscriber got every item")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    deliveries = args.subscribers * args.items
    print(f"{args.subscribers} subscribers x {args.items} items, median of {args.repeat}")
    cases = (
        ("no filters", (), {}),
        ("skip-self + meta", ("skip-self",), {"sender": "someone"}),
    )
    for label, filters, meta in cases:
        median = statistics.median(
            run(args.subscribers, args.items, filters, meta) for _ in range(args.repeat))
        print(f"  {label:17} {median / deliveries * 1e6:6.3f} us/delivery  "
              f"{deliveries / median:12,.0f} deliveries/s  "
              f"{median / args.items * 1e3:7.2f} ms/item")


if __name__ == "__main__":
    main()
