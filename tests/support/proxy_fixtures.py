"""A real proxy between a real client and a real origin, all on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

from fanout_tx.config.routes import RouteTable, parse_routes
from fanout_tx.core.bus import LocalBus
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.outbound.origin import InsecurePolicy, OriginEndpoints, ProxySettings
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.transports.http.hold import register_renderers
from fanout_tx.transports.http.proxy import ProxyFactory, ProxyResource
from fanout_tx.transports.write_batch import WriteBatch
from tests.support.helpers import TrackingFactory

Handler = Callable[[Request], Any]


class HttpOrigin(Resource):
    """An origin whose answer per path is a test-supplied function; records every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[bytes, Handler] = {}
        self.requests: list[Request] = []
        self.bodies: list[bytes] = []

    @override
    def render(self, request: Request) -> Any:
        self.requests.append(request)
        self.bodies.append(request.content.read())
        handler = self.handlers.get(request.path)
        if handler is None:
            request.setResponseCode(404)
            return b"not found\n"
        return handler(request)

    def header(self, index: int, name: str) -> list[str] | None:
        values = self.requests[index].requestHeaders.getRawHeaders(name.encode())
        return None if values is None else [v.decode() for v in values]


def grip(request: Request, body: bytes = b"", **headers: str) -> bytes:
    """Answer with Grip-* headers given as keyword arguments (Grip_Hold -> Grip-Hold)."""
    for name, value in headers.items():
        request.responseHeaders.addRawHeader(name.replace("_", "-"), value)
    return body


class Collect(Protocol):
    """A client body reader that keeps the chunks as they arrive."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    @override
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


@dataclass
class Routes:
    table: RouteTable


class ProxyHarness:
    """HttpOrigin Site, proxy Site and a client Agent; everything torn down by the test case."""

    def __init__(self, test: TestCase, route: str = "*", target_options: str = "",
                 settings: ProxySettings | None = None, extra_targets: str = "",
                 max_client_buffer: int | None = None, clock: Any = reactor,
                 tls_options: Any = None, trust_root: Any = None) -> None:
        self.origin = HttpOrigin()
        self.origin_factory = TrackingFactory(Site(self.origin))
        if tls_options is None:
            self.origin_port = reactor.listenTCP(0, self.origin_factory, backlog=1024,
                                                interface="127.0.0.1")
        else:
            self.origin_port = reactor.listenSSL(0, self.origin_factory, tls_options,
                                                interface="127.0.0.1")
        self.origin_address = f"127.0.0.1:{self.origin_port.getHost().port}"
        self.routes = Routes(parse_routes(
            f"{route} {extra_targets}{self.origin_address}{target_options}"))
        self.clock = clock
        self.router = Router(clock)
        register_renderers(self.router)
        self.bus = LocalBus(self.router)
        kwargs = {} if max_client_buffer is None else {"max_client_buffer": max_client_buffer}
        policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root)
        self.origin_clients = (
            OriginClient(reactor, OriginEndpoints(reactor, policy)),
            OriginClient(reactor, OriginEndpoints(reactor, InsecurePolicy())),
        )
        self.resource = ProxyResource(
            self.routes, self.router, clock, self.origin_clients[0], settings,
            insecure_agent=self.origin_clients[1], write_batch=WriteBatch(reactor), **kwargs)
        self.proxy_factory = TrackingFactory(ProxyFactory(self.resource, reactor))
        self.proxy_port = reactor.listenTCP(0, self.proxy_factory, backlog=1024,
                                           interface="127.0.0.1")
        self.client_pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = Agent(reactor, pool=self.client_pool)
        self.bodies: list[Deferred[bytes]] = []  # client bodies to see finished at teardown
        test.addCleanup(self.close)

    @property
    def url(self) -> bytes:
        return b"http://127.0.0.1:%d" % self.proxy_port.getHost().port

    def set_routes(self, text: str) -> None:
        self.routes.table = parse_routes(text)

    def handle(self, path: bytes, handler: Handler) -> None:
        self.origin.handlers[path] = handler

    def publish(self, channel: str, **formats: Any) -> None:
        item = {"channel": channel, "formats": {k.replace("_", "-"): v for k, v in formats.items()}}
        self.bus.publish([parse_item(item)], "test")

    def publish_item(self, item: dict) -> None:
        self.bus.publish([parse_item(item)], "test")

    def request(self, path: bytes, method: bytes = b"GET", headers: Any = None,
                body: Any = None) -> Deferred[Any]:
        return self.client.request(method, self.url + path, headers, body)

    async def fetch(self, path: bytes, **kwargs: Any) -> tuple[Any, bytes]:
        response = await self.request(path, **kwargs)
        collect = Collect()
        response.deliverBody(collect)
        return response, await collect.done

    async def close(self) -> None:
        await gatherResults([self.client_pool.closeCachedConnections(),
                             *(c.closeCachedConnections() for c in self.origin_clients)])
        self.router.close_all("test over")
        await DeferredList(self.bodies, consumeErrors=True)
        await gatherResults([self.proxy_port.stopListening(), self.origin_port.stopListening()])
        for factory in (self.proxy_factory, self.origin_factory):
            for protocol in list(factory.protocols):
                protocol.transport.abortConnection()
        await gatherResults([self.proxy_factory.wait_closed(), self.origin_factory.wait_closed()])


def origin_on_loopback(test: TestCase, handlers: dict[bytes, Handler]) -> tuple[HttpOrigin, int]:
    """A real origin Site on 127.0.0.1 answering ``handlers``; stopped by the test case.
    Returns the origin and its port."""
    origin = HttpOrigin()
    origin.handlers.update(handlers)
    factory = TrackingFactory(Site(origin))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(factory.wait_closed)
    test.addCleanup(port.stopListening)
    return origin, port.getHost().port


def tree_config(folder: Path, origin_port: int, runner: str = "", more: str = "") -> Path:
    """A fanout.conf (and routes file to the origin) for a whole service tree on loopback,
    every port 0; ``runner`` adds lines to ``[runner]``, ``more`` other sections. Returns
    the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes").write_text(f"* 127.0.0.1:{origin_port}\n")
    config = folder / "fanout.conf"
    config.write_text(
        f"[runner]\nhttp_port = 127.0.0.1:0\n{runner}"
        "[handler]\npush_in_http_addr = 127.0.0.1\npush_in_http_port = 0\n"
        "push_in_spec = tcp://127.0.0.1:*\npush_in_sub_specs = tcp://127.0.0.1:*\n" + more)
    return config


def later(request: Request, body: bytes) -> None:
    """Finish a held origin request (used by handlers returning NOT_DONE_YET)."""
    request.write(body)
    request.finish()


__all__ = ["NOT_DONE_YET", "Collect", "HttpOrigin", "ProxyHarness", "grip", "later",
           "origin_on_loopback", "tree_config"]


class Started:
    """A request in flight and its body collector."""

    def __init__(self, proxy: ProxyHarness, path: bytes, **kwargs: Any) -> None:
        self.proxy = proxy
        self.deferred = proxy.request(path, **kwargs)
        self.response: Any = None
        self.collect = Collect()

    async def body(self) -> bytes:
        await self.headers_arrived()
        return await self.collect.done

    async def headers_arrived(self) -> Any:
        if self.response is None:
            self.response = await self.deferred
            self.response.deliverBody(self.collect)
            self.proxy.bodies.append(self.collect.done)
        return self.response

    def text(self) -> bytes:
        return b"".join(self.collect.chunks)
