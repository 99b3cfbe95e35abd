"""Micro-benchmarks for the built-in channel history (docs/reliability.rst).

1. Fan-out A/B: the router publishing to in-memory subscribers with ``[history]`` off and on
   (``max_items`` 100, in memory), interleaved, for a few subscriber counts: the cost of
   recording is once per item, not per subscriber. Then the same through real HTTP stream
   holds (``HeldStream``) on in-memory transports, flushed once per item.
2. Resume: an SSE stream request that comes back with ``Last-Event-ID`` and gets 100 missed
   items from history, through the real proxy-side code (``HeldStream`` on a ``Site`` over an
   in-memory transport, flushed): server time per request with the resume, minus the same
   request without one.

    python bench/history_bench.py [--repeat 7] [--missed 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bench.router_bench import CountingSubscriber
from fanout_tx.core.history import MemoryHistory
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.grip.instruct import Channel, Instruct, Response
from fanout_tx.transports.http.hold import HeldStream, register_renderers
from fanout_tx.transports.write_batch import WriteBatch


def fanout(subscribers: int, items: int, history: bool) -> float:
    """Seconds per item published to ``subscribers`` counting subscribers."""
    clock = Clock()
    router = Router(clock, history=MemoryHistory(clock, 100, 3600) if history else None)
    router.add_renderer("http-stream", lambda fmt: fmt.content)
    for _ in range(subscribers):
        router.subscribe("bench", CountingSubscriber())
    batch = [parse_item({"channel": "bench", "id": str(n),
                         "formats": {"http-stream": {"content": f"item {n}\n"}}})
             for n in range(items)]
    start = time.perf_counter()
    for item in batch:
        router.publish(item)
    return (time.perf_counter() - start) / items


class _Origin:
    def retry(self, grip_last: Any = ()) -> None:
        """Not asked in this benchmark."""

    def fetch_link(self, link: Any, grip_last: Any) -> Any:
        raise AssertionError("no link here")

    def channel_name(self, name: str) -> str:
        return name


class _StreamResource(Resource):
    isLeaf = True

    def __init__(self, router: Router, clock: Clock) -> None:
        super().__init__()
        self.router, self.clock = router, clock
        self.batch = WriteBatch(clock)
        self.instruct = Instruct(hold="stream", channels=(Channel("bench"),),
                                 response=Response(200, None,
                                                   (("Content-Type", "text/event-stream"),),
                                                   b":open\n\n"))

    def render(self, request: Request) -> int:
        HeldStream(request, self.router, self.clock, self.instruct, _Origin(),
                   batch=self.batch).start()
        return NOT_DONE_YET


def resume(missed: int, with_id: bool, requests: int = 200) -> float:
    """Seconds of server time per stream request (parse, hold, replay, one flush)."""
    clock = Clock()
    history = MemoryHistory(clock, 2 * missed, 0)
    router = Router(clock, history=history)
    register_renderers(router)
    for n in range(1, 2 * missed + 1):
        router.publish(parse_item({"channel": "bench", "id": f"i{n}", "formats": {
            "http-stream": {"content": f"id: i{n}\ndata: {'x' * 80}\n\n"}}}))
    site = Site(_StreamResource(router, clock), timeout=None)
    header = f"Last-Event-ID: i{missed}\r\n" if with_id else ""
    raw = f"GET /events HTTP/1.1\r\nHost: h\r\n{header}\r\n".encode()
    connections = []
    for _ in range(requests):
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        connections.append((protocol, transport))
    start = time.perf_counter()
    for protocol, _transport in connections:
        protocol.dataReceived(raw)
    clock.advance(0)  # the write batch's flush
    elapsed = (time.perf_counter() - start) / requests
    sample = connections[0][1].value()
    expected = missed if with_id else 0
    if sample.count(b"id: i") != expected:
        raise AssertionError(f"expected {expected} replayed items, got {sample.count(b'id: i')}")
    for protocol, _transport in connections:
        protocol.connectionLost(Failure(ConnectionDone()))
    return elapsed


def streams(subscribers: int, items: int, history: bool) -> float:
    """Seconds per item published to ``subscribers`` real HTTP streams (HeldStream on a
    Site over in-memory transports, one flush per item): the transport's own cost included."""
    clock = Clock()
    router = Router(clock, history=MemoryHistory(clock, 100, 3600) if history else None)
    register_renderers(router)
    site = Site(_StreamResource(router, clock), timeout=None)
    connections = []
    for _ in range(subscribers):
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n")
        connections.append((protocol, transport))
    clock.advance(0)
    batch = [parse_item({"channel": "bench", "id": f"i{n}", "formats": {
        "http-stream": {"content": f"id: i{n}\ndata: {'x' * 80}\n\n"}}}) for n in range(items)]
    start = time.perf_counter()
    for item in batch:
        router.publish(item)
        clock.advance(0)
    elapsed = (time.perf_counter() - start) / items
    for protocol, transport in connections:
        transport.clear()
        protocol.connectionLost(Failure(ConnectionDone()))
    return elapsed


def off_vs_on(measure: Callable[[int, int, bool], float], subscribers: int, items: int,
              repeat: int, what: str) -> str:
    """One line: ``measure`` with history off and on, interleaved, medians per item."""
    off, on = [], []
    for _ in range(repeat):
        off.append(measure(subscribers, items, False))
        on.append(measure(subscribers, items, True))
    a, b = statistics.median(off), statistics.median(on)
    return (f"  {subscribers:6} {what}: off {a * 1e6:8.2f} us/item  on {b * 1e6:8.2f} "
            f"us/item  ({(b - a) / a * 100:+.1f} %, {(b - a) * 1e6:+.2f} us/item)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--missed", type=int, default=100)
    args = parser.parse_args()
    print(f"fan-out, history off vs on (max_items 100), median of {args.repeat}, interleaved")
    for subscribers, items in ((1, 20_000), (100, 2_000), (10_000, 20)):
        print(off_vs_on(fanout, subscribers, items, args.repeat, "subscribers"))
    print("HTTP streams (HeldStream, in-memory transports), history off vs on")
    for subscribers, items in ((1, 5_000), (100, 500), (1_000, 50)):
        print(off_vs_on(streams, subscribers, items, args.repeat, "streams"))
    base = statistics.median(resume(args.missed, False) for _ in range(args.repeat))
    full = statistics.median(resume(args.missed, True) for _ in range(args.repeat))
    print(f"resume of {args.missed} missed items (SSE stream, Last-Event-ID), median of "
          f"{args.repeat}:")
    print(f"  request without resume {base * 1e3:.3f} ms, with resume {full * 1e3:.3f} ms: "
          f"resume costs {(full - base) * 1e3:.3f} ms of server time")


if __name__ == "__main__":
    main()
