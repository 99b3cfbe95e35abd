"""The publish API served on 127.0.0.1 port 0, with keys and tokens to call it."""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from typing_extensions import override

from fanout_tx.core.bus import LocalBus
from fanout_tx.core.router import Router
from fanout_tx.grip.signature import encode_hs256
from fanout_tx.inputs.publish_api import PublishRoot, PublishSite
from fanout_tx.inputs.publish_auth import BearerAuth
from tests.support.helpers import RawClient, RecordingSubscriber, TrackingFactory

KEY = b"publish-secret"
NOW = 1_800_000_000.0
ITEM = {"channel": "c", "formats": {"http-stream": {"content": "hello\n"}}}


def publish_body(*items: Any) -> bytes:
    return json.dumps({"items": list(items)}).encode("utf-8")


def publish_token(**claims: Any) -> bytes:
    claims.setdefault("iss", "publisher")
    claims.setdefault("exp", int(NOW) + 60)
    return b"Bearer " + encode_hs256(claims, KEY).encode("ascii")


class PublishApiCase(TestCase):
    """Serves a PublishRoot on 127.0.0.1 port 0; a non-persistent client talks to it."""

    max_body_size = 1000
    timeout = 15

    @override
    def setUp(self) -> None:
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.clock = Clock()
        self.clock.advance(self.now())
        self.router = Router(self.clock)
        self.subscriber = RecordingSubscriber()
        self.router.subscribe("c", self.subscriber)
        self.bus: Any = LocalBus(self.router)

    def now(self) -> float:
        """The server clock's time at the start of the test."""
        return NOW

    def root(self, key: bytes = b"", iss: str = "") -> PublishRoot:
        return PublishRoot(self.bus, self.router, BearerAuth(key, iss, self.clock))

    async def serve(self, root: PublishRoot) -> str:
        factory = TrackingFactory(PublishSite(root, self.max_body_size, reactor))
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(factory.wait_closed)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        return f"http://127.0.0.1:{self.port}"

    async def post(self, url: str, body: bytes, **headers: str) -> tuple[int, Any, bytes]:
        response = await self.http.post(url, data=body, headers=headers)
        return response.code, response.headers, await response.content()

    async def get(self, url: str, **headers: str) -> tuple[int, Any, bytes]:
        response = await self.http.get(url, headers=headers)
        return response.code, response.headers, await response.content()

    async def raw(self, *chunks: bytes) -> RawClient:
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        for chunk in chunks:
            client.transport.write(chunk)
        return client
