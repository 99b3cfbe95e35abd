"""GET /metrics: values follow real connections and deliveries on every transport."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import treq
import zmq
from prometheus_client.core import Metric
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.ops.metrics import (
    FanoutCollector,
    InputCounters,
    MachineCollector,
    MeteredBus,
    MetricSources,
)
from fanout_tx.transports.xmpp.link import LinkState
from tests.support.helpers import RecordingBus, RecordingSubscriber, wait_until
from tests.support.ops_fixtures import Samples, Server
from tests.support.services import free_port


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Receiver(Resource):
    """A webhook endpoint that answers 204 and records bodies."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    @override
    def render_POST(self, request: Any) -> bytes:  # noqa: N802
        self.bodies.append(request.content.read())
        request.setResponseCode(204)
        return b""


class LiveMetricsTests(TestCase):
    timeout = 60

    async def test_connections_and_deliveries_on_each_transport(self) -> None:
        """Long-poll, stream, WebSocket and webhook subscribers show in fanout_connections
        while they are held, a publish counts once per transport in fanout_deliveries_total
        and once in fanout_items_received_total{input="http"}, and the gauges fall back to 0
        as clients go."""
        server = await Server(self).start(webhooks=True)
        receiver = Receiver()
        hook_port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
        self.addCleanup(hook_port.stopListening)
        before = await server.metrics()
        for transport in ("http-response", "http-stream", "ws", "xmpp", "webhook"):
            self.assertEqual(sample(before, "fanout_connections", transport=transport), 0)

        poll = await server.raw("/lp")
        stream = await server.raw("/stream")
        ws = await server.websocket()
        code, body = await server.post_json("/webhooks/subscriptions", {
            "url": f"http://127.0.0.1:{hook_port.getHost().port}/hook",
            "channels": ["room"], "verify": False})
        self.assertEqual(code, 201, body)
        await server.held(4)
        held = await server.metrics()
        for transport in ("http-response", "http-stream", "ws", "webhook"):
            self.assertEqual(sample(held, "fanout_connections", transport=transport), 1,
                             transport)
        self.assertEqual(sample(held, "fanout_subscriptions"), 4)
        self.assertEqual(sample(held, "fanout_client_connections"), 3)  # poll, stream, ws
        self.assertEqual(sample(held, "fanout_client_accept_paused"), 0)

        await server.publish(**{"http-response": {"body": "poll answer\n"},
                                "http-stream": {"content": "stream item\n"},
                                "ws-message": {"content": "ws item"},
                                "http-request": {"body": "hook item"}})
        await wait_until(lambda: b"poll answer" in poll.data)
        await wait_until(lambda: b"stream item" in stream.data)
        await ws.wait_messages(2)
        await wait_until(lambda: receiver.bodies == [b"hook item"])
        await wait_until(lambda: server.root.getServiceNamed("webhooks")
                         .engine.attempts["success"] == 1)
        after = await server.metrics()
        self.assertEqual(sample(after, "fanout_items_received_total", input="http"), 1)
        for transport in ("http-response", "http-stream", "ws", "webhook"):
            self.assertEqual(sample(after, "fanout_deliveries_total", transport=transport), 1,
                             transport)
        self.assertEqual(sample(after, "fanout_webhook_attempts_total", outcome="success"), 1)
        self.assertEqual(sample(after, "fanout_connections", transport="http-response"), 0)

        stream.transport.loseConnection()
        ws.client.sendClose(1000)
        await ws.closed
        await server.held(1)  # the webhook subscription stays
        gone = await server.metrics()
        for transport in ("http-stream", "ws"):
            self.assertEqual(sample(gone, "fanout_connections", transport=transport), 0)
        self.assertEqual(sample(gone, "fanout_connections", transport="webhook"), 1)

    async def test_inputs_count_items_and_errors(self) -> None:
        """Items and refused messages are counted per input: HTTP and ZeroMQ PULL."""
        server = await Server(self).start()
        code, _body = await server.post_json("/publish/", {"items": [{"channel": 1}]})
        self.assertEqual(code, 400)
        context = zmq.Context()
        self.addCleanup(context.term)
        push = context.socket(zmq.PUSH)
        self.addCleanup(push.close, 0)
        push.connect(server.root.getServiceNamed("zmq-pull").endpoints[0])
        push.send(b"J" + b'{"channel": "room", "formats": {"http-stream": {"content": "x"}}}')
        push.send(b"J{not json")
        await wait_until(lambda: server.core.input_bus.counters.received["zmq-pull"] == 1
                         and server.root.getServiceNamed("zmq-pull").rejected == 1)
        samples = await server.metrics()
        self.assertEqual(sample(samples, "fanout_publish_errors_total", input="http"), 1)
        self.assertEqual(sample(samples, "fanout_publish_errors_total", input="zmq-pull"), 1)
        self.assertEqual(sample(samples, "fanout_items_received_total", input="zmq-pull"), 1)
        self.assertEqual(sample(samples, "fanout_items_received_total", input="http"), 0)

    async def test_separate_listener(self) -> None:
        """[metrics] addr/port add a listener serving /metrics and /health."""
        port = free_port()
        server = await Server(self).start(f"[metrics]\naddr=127.0.0.1\nport={port}\n")
        samples = await server.metrics(port=port)
        self.assertEqual(sample(samples, "fanout_subscriptions"), 0)
        self.assertIn("metrics", [s.name for s in server.root])
        response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual((await treq.json_content(response))["status"], "ok")


class CollectorTests(SynchronousTestCase):
    """State objects read at scrape time: XMPP link, webhook engine, Redis bus, bus errors."""

    def collect(self, sources: MetricSources) -> dict[tuple[str, tuple], float]:
        families: list[Metric] = list(FanoutCollector(sources).collect())
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in families for s in family.samples}

    def test_state_objects(self) -> None:
        router = Router(Clock())
        for formats in (("xmpp-message", "xmpp-stanza"), ("xmpp-message", "xmpp-stanza"),
                        ("http-request",)):
            router.subscribe("room", RecordingSubscriber(formats))
        link = LinkState(up=True)
        link.errors.update({"not-authorized": 2, "unreachable": 1})
        link.oversized = 3
        link.unsent.update({"max_buffered_bytes": 4, "link_down": 6})
        webhooks = SimpleNamespace(engine=SimpleNamespace(
            attempts=Counter(success=3, failure=2), dead_letters=1,
            evicted=Counter(max_pending_bytes_total=1),
            dead_letters_dropped=Counter(max_dead_letter_bytes=5),
            pending_bytes=lambda: 4096))
        redis = SimpleNamespace(up=False, received_items=7)
        router.publish(parse_item({"channel": "room", "formats": {
            "xmpp-message": {"body": "hi"}, "http-request": {"body": "x"}}}))
        values = self.collect(MetricSources(
            router, InputCounters(), webhooks=webhooks, xmpp_link=link, redis=redis,
            client_connections=SimpleNamespace(open=5, paused=True,
                                               dropped=Counter(body_rate=2)),
            write_budget=SimpleNamespace(total=4096, dropped=3)))
        self.assertEqual(values[("fanout_client_dropped_total", (("reason", "max_buffered"),))], 3)
        self.assertEqual(values[("fanout_slow_client_buffered_bytes", ())], 4096)
        self.assertEqual(values[("fanout_client_connections", ())], 5)
        self.assertEqual(values[("fanout_client_dropped_total", (("reason", "body_rate"),))], 2)
        self.assertEqual(values[("fanout_client_dropped_total", (("reason", "header_timeout"),))],
                         0)
        self.assertEqual(values[("fanout_client_accept_paused", ())], 1)
        self.assertEqual(values[("fanout_connections", (("transport", "xmpp"),))], 2)
        self.assertEqual(values[("fanout_connections", (("transport", "webhook"),))], 1)
        self.assertEqual(values[("fanout_deliveries_total", (("transport", "xmpp"),))], 2)
        self.assertEqual(values[("fanout_xmpp_link_up", ())], 1)
        self.assertEqual(values[("fanout_xmpp_oversized_total", ())], 3)
        self.assertEqual(
            values[("fanout_xmpp_unsent_total", (("reason", "max_buffered_bytes"),))], 4)
        self.assertEqual(values[("fanout_xmpp_unsent_total", (("reason", "link_down"),))], 6)
        self.assertEqual(
            values[("fanout_xmpp_link_errors_total", (("reason", "not-authorized"),))], 2)
        self.assertEqual(
            values[("fanout_webhook_attempts_total", (("outcome", "failure"),))], 2)
        self.assertEqual(values[("fanout_webhook_dead_letters_total", ())], 1)
        self.assertEqual(
            values[("fanout_webhook_evicted_total", (("reason", "max_pending_bytes_total"),))], 1)
        self.assertEqual(values[("fanout_webhook_evicted_total", (("reason", "max_pending"),))],
                         0)
        self.assertEqual(values[("fanout_webhook_dead_letters_dropped_total",
                                 (("reason", "max_dead_letter_bytes"),))], 5)
        self.assertEqual(values[("fanout_webhook_dead_letters_dropped_total",
                                 (("reason", "max_dead_letters"),))], 0)
        self.assertEqual(values[("fanout_webhook_pending_bytes", ())], 4096)
        self.assertEqual(values[("fanout_redis_up", ())], 0)
        self.assertEqual(values[("fanout_items_received_total", (("input", "redis"),))], 7)
        link.up = False
        values = self.collect(MetricSources(router, InputCounters(), xmpp_link=link))
        self.assertEqual(values[("fanout_xmpp_link_up", ())], 0)

    def test_bus_failures_count_as_publish_errors(self) -> None:
        """A publish the bus refuses (Redis away) is a publish error of its input."""
        counters = InputCounters()
        bus = MeteredBus(RecordingBus(RuntimeError("redis is down")), counters)
        failed = bus.publish([parse_item({"channel": "a", "formats": {
            "http-stream": {"content": "x"}}})], "zmq-sub")
        self.failureResultOf(failed, RuntimeError)
        self.assertEqual((counters.received["zmq-sub"], counters.errors["zmq-sub"]), (1, 1))


class MachineCollectorTests(SynchronousTestCase):
    def test_workers_summed_paused_per_worker(self) -> None:
        """A supervisor's /metrics: its own and every worker's samples, summed; the
        accept-paused gauge once per worker, labelled."""
        local = FanoutCollector(MetricSources(router=Router(Clock()), inputs=InputCounters()))
        local.sources.inputs.received["http"] = 3
        worker = (b'fanout_connections{transport="ws"} 2.0\n'
                  b"# TYPE fanout_client_accept_paused gauge\n"
                  b"fanout_client_accept_paused 1.0\n")
        families = {family.name: family for family in MachineCollector(
            local, lambda: [(0, worker), (1, worker.replace(b"paused 1.0", b"paused 0.0"))]
        ).collect()}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in families.values() for s in family.samples}
        self.assertEqual(samples[("fanout_connections", (("transport", "ws"),))], 4)
        self.assertEqual(samples[("fanout_items_received_total", (("input", "http"),))], 3)
        self.assertEqual(samples[("fanout_client_accept_paused", (("worker", "0"),))], 1)
        self.assertEqual(samples[("fanout_client_accept_paused", (("worker", "1"),))], 0)
