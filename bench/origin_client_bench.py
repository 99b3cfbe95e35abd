"""CPU per request of the origin client (fanout_tx/outbound/origin_client.py).

A raw Twisted origin in a child process on 127.0.0.1 answers every request head with one fixed
keep-alive answer; this process sends N requests through ``OriginClient`` (sequentially, or
with K in flight on K pooled connections), reads every body, and reports its own CPU time
(user + system) and wall time per request. ``--memory``: no socket and no reactor, one
connection over an in-memory transport, each answer handed to it in one piece (the client's
own work per request: the request head, parsing the answer, the body, the pool). Run it
against another tree with ``PYTHONPATH=/path/to/tree python bench/origin_client_bench.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from typing import Any

ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-cache\r\n"
              b"Date: Fri, 04 Dec 2026 20:00:00 GMT\r\nContent-Length: 13\r\n\r\nhello, world\n",
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-cache\r\n"
               b"Date: Fri, 04 Dec 2026 20:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"d\r\nhello, world\n\r\n0\r\n\r\n",
}

ORIGIN = """
import sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

ANSWER = bytes.fromhex(sys.argv[1])

class Origin(Protocol):
    pending = b""

    def dataReceived(self, data):
        data = self.pending + data
        count = data.count(b"\\r\\n\\r\\n")
        self.pending = data[data.rfind(b"\\r\\n\\r\\n") + 4:] if count else data
        if count:
            self.transport.write(ANSWER * count)

port = reactor.listenTCP(0, Factory.forProtocol(Origin), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--answer", choices=sorted(ANSWERS), default="length")
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    if args.memory:
        run_memory(args)
        return

    origin = subprocess.Popen([sys.executable, "-c", ORIGIN, ANSWERS[args.answer].hex()],
                              stdout=subprocess.PIPE, env=os.environ)
    try:
        assert origin.stdout is not None
        port = int(origin.stdout.readline())
        run(port, args)
    finally:
        origin.terminate()
        origin.wait(10)


def run(port: int, args: Any) -> None:
    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.protocol import Protocol
    from twisted.web.client import BrowserLikePolicyForHTTPS
    from twisted.web.http_headers import Headers

    from fanout_tx.outbound.origin import OriginEndpoints
    from fanout_tx.outbound.origin_client import OriginClient

    client = OriginClient(reactor, OriginEndpoints(reactor, BrowserLikePolicyForHTTPS()))
    url = b"http://127.0.0.1:%d/stream?x=1" % port
    headers = Headers({b"User-Agent": [b"bench"], b"Accept": [b"*/*"]})

    class Body(Protocol):
        def __init__(self, done: Deferred[None]) -> None:
            self.done = done

        def connectionLost(self, reason: object = None) -> None:  # noqa: N802
            self.done.callback(None)

    def one(response: Any) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        response.deliverBody(Body(done))
        return done

    async def worker(count: int) -> None:
        for _ in range(count):
            await client.request(b"GET", url, headers).addCallback(one)

    async def batch(total: int) -> None:
        share = total // args.inflight
        await gatherResults(
            [Deferred.fromCoroutine(worker(share)) for _ in range(args.inflight)])

    async def measure(_reactor: Any) -> None:
        await batch(max(1000, args.inflight * 20))  # warm-up: connections made, code paths hot
        total = args.requests - args.requests % args.inflight
        cpu0, wall0 = cpu(), time.perf_counter()
        await batch(total)
        cpu1, wall1 = cpu(), time.perf_counter()
        print(f"answer={args.answer} inflight={args.inflight} requests={total}: "
              f"{(cpu1 - cpu0) / total * 1e6:.1f} us CPU/request, "
              f"{(wall1 - wall0) / total * 1e6:.1f} us wall/request")
        await client.closeCachedConnections()

    task.react(lambda r: Deferred.fromCoroutine(measure(r)))


def run_memory(args: Any) -> None:
    from twisted.internet.defer import succeed
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.http_headers import Headers

    from fanout_tx.outbound.origin_client import OriginClient

    connections: list[tuple[Any, StringTransport]] = []

    class Endpoint:
        def connect(self, factory: Any) -> Any:
            protocol, transport = factory.buildProtocol(None), StringTransport()
            protocol.makeConnection(transport)
            connections.append((protocol, transport))
            return succeed(protocol)

    class Endpoints:
        def endpointForURI(self, uri: Any) -> Endpoint:  # noqa: N802
            return Endpoint()

    class Body(Protocol):
        pass

    client = OriginClient(Clock(), Endpoints())  # type: ignore[arg-type]
    headers = Headers({b"User-Agent": [b"bench"], b"Accept": [b"*/*"]})
    answer = ANSWERS[args.answer]
    responses: list[Any] = []

    def requests(count: int) -> None:
        for _ in range(count):
            client.request(b"GET", b"http://127.0.0.1:8080/stream?x=1", headers).addCallback(
                responses.append)
            protocol, transport = connections[-1]
            transport.clear()
            protocol.dataReceived(answer)
            responses.pop().deliverBody(Body())

    requests(2000)
    share = args.requests // 5
    best = []  # the least of 5 rounds: the machine's other work only ever adds
    for _round in range(5):
        cpu0, wall0 = cpu(), time.perf_counter()
        requests(share)
        best.append(((cpu() - cpu0) / share * 1e6, (time.perf_counter() - wall0) / share * 1e6))
    assert len(connections) == 1, "the connection was not reused"
    cpu_us, wall_us = min(best)
    print(f"answer={args.answer} memory requests={share}x5: {cpu_us:.2f} us CPU/request, "
          f"{wall_us:.2f} us wall/request (best round)")


if __name__ == "__main__":
    main()
