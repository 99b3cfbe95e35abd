"""The whole server from tap.build_service on loopback, with real origins and real clients,
for the operations tests (metrics, health, stats), and a reader of the stats socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import treq
import zmq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from twisted.web.server import Request, Site

from fanout_tx.core.codecs import tnetstring
from fanout_tx.tap import build_service, listening_port, load_settings
from tests.support import proxy_fixtures
from tests.support.helpers import RawClient, wait_until
from tests.support.twistd import write_config
from tests.support.ws import ClientSide, WsOverHttpOrigin, grip_echo, listen_endpoint

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def hold(request: Request) -> bytes:
    """``/lp``: a long-poll on channel ``room``; ``/stream``: a stream on ``room``."""
    if request.path == b"/stream":
        return proxy_fixtures.grip(request, b"stream open\n", Grip_Hold="stream",
                                   Grip_Channel="room")
    return proxy_fixtures.grip(request, b"timed out\n", Grip_Hold="response",
                               Grip_Channel="room", Grip_Timeout="300")


class Server:
    """build_service + start, with an HTTP GRIP origin and a WebSocket-over-HTTP origin."""

    def __init__(self, test: TestCase) -> None:
        self.test = test

    async def start(self, extra: str = "", webhooks: bool = False) -> Server:
        http_origin = proxy_fixtures.HttpOrigin()
        http_origin.handlers = {b"/lp": hold, b"/stream": hold}
        self.http_origin = http_origin
        self.ws_origin = WsOverHttpOrigin(grip_echo)
        ports = []
        for resource in (http_origin, self.ws_origin):
            port = await listen_endpoint().listen(Site(resource))
            self.test.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        routes = (f"*,path_beg=/ws 127.0.0.1:{ports[1]},over_http\n"
                  f"* 127.0.0.1:{ports[0]}\n")
        hooks = ("[webhooks]\nenabled=true\nallow_cidrs=127.0.0.0/8\nverify=false\n"
                 if webhooks else "[webhooks]\nenabled=false\n")
        config = write_config(Path(self.test.mktemp()), (
            "[runner]\nhttp_port=127.0.0.1:0\n"
            "[proxy]\nroutesfile=routes\n"
            "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
            "push_in_http_addr=127.0.0.1\npush_in_http_port=0\n" + hooks + extra
        ), routes=routes)
        self.root, self.core = build_service(load_settings(str(config)), reactor)
        self.root.startService()
        self.test.addCleanup(self.root.stopService)
        proxy = next(iter(self.root.getServiceNamed("http-proxy")))
        self.port = (await listening_port(proxy)).getHost().port
        publish = self.root.getServiceNamed("publish-http")
        self.publish_port = (await listening_port(publish)).getHost().port
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.publish_port}{path}"

    async def get(self, path: str) -> tuple[int, bytes]:
        response = await treq.get(self.url(path), persistent=False)
        return response.code, await treq.content(response)

    async def post_json(self, path: str, body: Any) -> tuple[int, bytes]:
        response = await treq.post(self.url(path), json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"},
                                   persistent=False)
        return response.code, await treq.content(response)

    async def publish(self, **formats: Any) -> None:
        code, body = await self.post_json("/publish/", {"items": [
            {"channel": "room", "formats": formats}]})
        self.test.assertEqual(code, 200, body)

    async def metrics(self, path: str = "/metrics", port: int | None = None) -> Samples:
        url = f"http://127.0.0.1:{port}{path}" if port else self.url(path)
        response = await treq.get(url, persistent=False)
        self.test.assertEqual(response.code, 200)
        text = (await treq.text_content(response))
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    async def raw(self, path: str) -> RawClient:
        client = RawClient()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(
            Factory.forProtocol(lambda: client))
        self.test.addCleanup(lambda: client.transport.loseConnection())
        client.transport.write(f"GET {path} HTTP/1.1\r\nHost: example\r\n\r\n".encode())
        return client

    async def websocket(self) -> ClientSide:
        side = ClientSide(f"ws://127.0.0.1:{self.port}/ws/chat")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(side)
        await side.opened
        self.test.addCleanup(lambda: side.client.transport.loseConnection())
        side.client.sendMessage(b"sub:room")
        await side.wait_messages(1)
        return side

    async def held(self, count: int) -> None:
        """Wait until ``count`` connections hold a subscription."""
        await wait_until(lambda: self.core.router.subscriber_count() == count)


def decode(message: bytes) -> tuple[str, dict[str, Any]]:
    """``<type> T<tnetstring>`` or ``<type> J<json>``, as Pushpin frames them."""
    kind, space, rest = message.partition(b" ")
    assert space and rest[:1] in (b"T", b"J"), message
    if rest[:1] == b"J":
        return kind.decode(), json.loads(rest[1:])
    body = tnetstring.loads(rest[1:])
    return kind.decode(), {k.decode(): v.decode() if isinstance(v, bytes) else v
                           for k, v in body.items()}


class StatsSubscriber:
    """A SUB socket on the stats endpoint, drained without blocking the reactor."""

    def __init__(self, test: Any, endpoint: str) -> None:
        self.context = zmq.Context()
        test.addCleanup(self.context.term)
        self.socket = self.context.socket(zmq.SUB)
        test.addCleanup(self.socket.close, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        while True:
            try:
                self.messages.append(decode(self.socket.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return self.messages

    def find(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        for got_kind, body in self.drain():
            if got_kind == kind and all(body.get(k) == v for k, v in fields.items()):
                return body
        return None

    async def wait(self, kind: str, **fields: Any) -> dict[str, Any]:
        await wait_until(lambda: self.find(kind, **fields) is not None)
        body = self.find(kind, **fields)
        assert body is not None
        return body
