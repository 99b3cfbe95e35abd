"""GET /health follows real Redis and XMPP servers going away, and reports listeners."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support.ops_fixtures import Server
from tests.support.prosody import ProsodyServer
from tests.support.services import RedisServer, free_port


class HealthTests(TestCase):
    timeout = 60

    async def health(self, server: Server) -> tuple[int, dict[str, Any]]:
        code, body = await server.get("/health")
        return code, json.loads(body)

    async def wait_health(self, server: Server, code: int) -> dict[str, Any]:
        """Poll /health until it answers ``code`` (state changes arrive from other
        processes); fail after 20 s with the last answer."""
        deadline = reactor.seconds() + 20
        while True:
            got, body = await self.health(server)
            if got == code:
                return body
            if reactor.seconds() > deadline:
                self.fail(f"/health never answered {code}; last: {got} {body}")
            await deferLater(reactor, 0.05, lambda: None)

    async def test_listeners_and_zmq_inputs(self) -> None:
        """Without Redis or XMPP: 200, every listener and ZeroMQ input up, with addresses."""
        server = await Server(self).start()
        body = await self.wait_health(server, 200)
        services = body["services"]
        self.assertEqual(body["status"], "ok")
        self.assertEqual(set(services), {"http-proxy", "publish-http", "zmq-pull", "zmq-sub"})
        self.assertEqual(services["http-proxy"]["listening"], [f"127.0.0.1:{server.port}"])
        self.assertEqual(services["publish-http"]["listening"],
                         [f"127.0.0.1:{server.publish_port}"])
        self.assertTrue(services["zmq-pull"]["endpoints"][0].startswith("tcp://127.0.0.1:"))

    async def test_redis_stopped(self) -> None:
        """Redis up: 200 and fanout_redis_up 1; Redis stopped: 503, redis down, gauge 0."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        server = await Server(self).start(f"[redis]\nurl={redis.url}\n")
        await server.core.bus.when_up()
        body = await self.wait_health(server, 200)
        self.assertEqual(body["services"]["redis"]["state"], "up")
        self.assertEqual((await server.metrics())[("fanout_redis_up", ())], 1)
        redis.stop()
        body = await self.wait_health(server, 503)
        self.assertEqual((body["status"], body["services"]["redis"]["state"]),
                         ("down", "down"))
        self.assertEqual(body["services"]["zmq-pull"]["state"], "up")
        self.assertEqual((await server.metrics())[("fanout_redis_up", ())], 0)

    async def test_xmpp_server_stopped(self) -> None:
        """The component link up: 200; Prosody stopped: 503 with the link's last error."""
        prosody = ProsodyServer()
        self.addCleanup(prosody.stop)
        server = await Server(self).start(
            f"[xmpp]\nenabled=true\njid={prosody.domain}\nhost=127.0.0.1\n"
            f"port={prosody.component_port}\nsecret={prosody.secret}\n"
            f"backend=http://127.0.0.1:{free_port()}/xmpp\n")
        body = await self.wait_health(server, 200)
        self.assertEqual(body["services"]["xmpp"]["state"], "up")
        prosody.stop()
        body = await self.wait_health(server, 503)
        xmpp = body["services"]["xmpp"]
        self.assertEqual(xmpp["state"], "down")
        self.assertIn("connection-lost", xmpp["last_error"])
        samples = await server.metrics()
        self.assertEqual(samples[("fanout_xmpp_link_up", ())], 0)
        self.assertGreaterEqual(
            samples[("fanout_xmpp_link_errors_total", (("reason", "connection-lost"),))], 1)
