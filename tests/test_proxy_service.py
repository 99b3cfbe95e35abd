"""The ``http-proxy`` service as twistd builds it, with publishes through the real HTTP
publish API and ZeroMQ PULL input: client -> service tree -> origin, all on loopback."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import zmq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from fanout_tx.tap import build_service, listening_port, load_settings
from fanout_tx.transports.http.proxy_service import ProxyService
from tests.support.helpers import TrackingFactory, wait_until
from tests.support.proxy_fixtures import Collect, grip, origin_on_loopback, tree_config


def read_body(response: Any) -> Deferred[bytes]:
    collect = Collect()
    response.deliverBody(collect)
    return collect.done


class ServiceTreeTests(TestCase):
    async def setUp(self) -> None:
        self.origin, origin_port = origin_on_loopback(self, {
            b"/lp": lambda r: grip(r, b"timeout", Grip_Hold="response", Grip_Channel="news")})
        config = tree_config(Path(self.mktemp()), origin_port)
        root, self.core = build_service(load_settings(str(config)), reactor)
        self.addCleanup(self.core.clients.close_idle)  # after every user stopped
        proxy = root.getServiceNamed("http-proxy")
        self.assertIsInstance(proxy, ProxyService)
        publish = root.getServiceNamed("publish-http")
        self.pull = root.getServiceNamed("zmq-pull")
        [listener] = list(proxy)
        listener.factory = proxy_factory = TrackingFactory(listener.factory)
        publish.factory = publish_factory = TrackingFactory(publish.factory)
        for service in (proxy, publish, self.pull):
            service.startService()
            self.addCleanup(service.stopService)
        self.addCleanup(lambda: gatherResults([proxy_factory.wait_closed(),
                                               publish_factory.wait_closed()]))
        self.proxy_url = b"http://127.0.0.1:%d" % (await listening_port(listener)).getHost().port
        self.publish_url = b"http://127.0.0.1:%d" % (await listening_port(publish)).getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.addCleanup(self.core.router.close_all, "test over")

    def held(self) -> Deferred[Any]:
        return self.agent.request(b"GET", self.proxy_url + b"/lp").addCallback(read_body)

    async def post(self, path: bytes, document: Any = None) -> bytes:
        body = FileBodyProducer(BytesIO(json.dumps(document).encode())) if document else None
        response = await self.agent.request(
            b"POST", self.publish_url + path,
            Headers({"Content-Type": ["application/json"]}), body)
        return await read_body(response)

    async def test_publish_api_completes_long_poll(self) -> None:
        held = self.held()
        await wait_until(lambda: self.core.router.has_subscribers("news"))
        answer = await self.post(b"/publish/", {"items": [
            {"channel": "news", "formats": {"http-response": {"body": "via API"}}}]})
        self.assertEqual(answer, b"Published\n")
        self.assertEqual(await held, b"via API")

    async def test_recover_rerequests_held_sessions(self) -> None:
        """POST /recover on the publish port makes the proxy ask the origin again."""
        held = self.held()
        await wait_until(lambda: self.core.router.has_subscribers("news"))

        def fresh(request: Request) -> bytes:
            return b"recovered"

        self.origin.handlers[b"/lp"] = fresh
        await self.post(b"/recover")
        self.assertEqual(await held, b"recovered")

    async def test_zmq_pull_completes_long_poll(self) -> None:
        held = self.held()
        await wait_until(lambda: self.core.router.has_subscribers("news"))
        context = zmq.Context.instance()
        push = context.socket(zmq.PUSH)
        self.addCleanup(push.close, 0)
        push.connect(self.pull.endpoints[0])
        push.send(b"J" + json.dumps({"channel": "news", "formats": {
            "http-response": {"body": "via zmq"}}}).encode())
        self.assertEqual(await held, b"via zmq")
