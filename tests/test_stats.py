"""The Pushpin-compatible stats socket, read by a real pyzmq SUB client."""

from __future__ import annotations

import zmq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.ops.stats_pub import UNTRACKED_REPORT_FIELDS, StatsPublisher, Totals
from tests.support.helpers import RecordingSubscriber
from tests.support.ops_fixtures import Server, StatsSubscriber

REPORT_FIELDS = {"from", "connections", "minutes", "received", "sent", "http-response-sent",
                 "duration", *UNTRACKED_REPORT_FIELDS}


class LiveStatsTests(TestCase):
    timeout = 60

    async def test_conn_sub_message_activity_report(self) -> None:
        """A stream and a WebSocket: conn and sub on subscribe, message per item and
        transport, activity for requests, unavailable when they end, and reports with
        every field Pushpin sends."""
        server = await Server(self).start(
            "[handler]\nstats_spec=tcp://127.0.0.1:*\nstats_format=tnetstring\n"
            "stats_report_interval=1\n")
        sub = StatsSubscriber(self, server.root.getServiceNamed("stats").endpoint)
        first = await sub.wait("report")  # the SUB is connected from here on
        self.assertEqual(set(first), REPORT_FIELDS)

        stream = await server.raw("/stream")
        ws = await server.websocket()
        conn = await sub.wait("conn", type="http")
        self.assertEqual((conn["peer-address"], conn["ttl"]), ("127.0.0.1", 120))
        self.assertTrue(conn["from"].startswith("fanout_tx_"))
        await sub.wait("conn", type="ws")
        await sub.wait("sub", mode="stream", channel="room", subscribers=1, ttl=60)
        await sub.wait("sub", mode="ws", channel="room", subscribers=1, ttl=60)

        code, _ = await server.post_json("/publish/", {"items": [{
            "channel": "room", "id": "item-1",
            "formats": {"http-stream": {"content": "hello\n"}, "ws-message": {"content": "hi"}},
        }]})
        self.assertEqual(code, 200)
        await sub.wait("message", channel="room", count=1, transport="http-stream")
        message = await sub.wait("message", transport="ws-message")
        self.assertEqual(message["item-id"], "item-1")
        activity = await sub.wait("activity")
        self.assertGreaterEqual(activity["count"], 2)
        await sub.wait("counts")
        report = await sub.wait("report", received=1, sent=2)
        self.assertEqual(report["connections"], 2)

        stream.transport.loseConnection()
        ended = await sub.wait("conn", unavailable=True)
        self.assertEqual(ended["id"], conn["id"])
        await sub.wait("sub", mode="stream", channel="room", unavailable=True)
        ws.client.sendClose(1000)
        await ws.closed
        await sub.wait("sub", mode="ws", channel="room", unavailable=True)


class ReportTests(SynchronousTestCase):
    """Reports on the injected clock, JSON framing, and the periodic conn/sub refresh."""

    def test_json_reports_on_the_clock(self) -> None:
        clock = Clock()
        router = Router(clock)
        received = [0]
        stats = StatsPublisher(clock, zmq.Context.instance(), "tcp://127.0.0.1:*", "json", 10,
                               router, Totals(lambda: received[0], router, lambda: 0))
        stats.startService()
        self.addCleanup(stats.stopService)
        sub = StatsSubscriber(self, stats.endpoint)
        poller = zmq.Poller()
        poller.register(sub.socket, zmq.POLLIN)
        for _ in range(100):  # until the SUB is connected: each tick sends a report
            clock.advance(10)
            if poller.poll(50):
                break
        while poller.poll(100):  # reports still on their way
            sub.drain()
        sub.messages.clear()
        subscriber = RecordingSubscriber(("http-response",))
        router.subscribe("news", subscriber)
        received[0] += 3
        router.publish(parse_item({"channel": "news", "id": "1",
                                   "formats": {"http-response": {"body": "x"}}}))
        clock.advance(10)
        while len(sub.drain()) < 4 and poller.poll(1000):
            pass
        kinds = [kind for kind, _body in sub.messages]
        self.assertEqual(kinds[:4], ["conn", "sub", "message", "report"])
        report = sub.messages[3][1]
        self.assertEqual(set(report), REPORT_FIELDS)
        self.assertEqual((report["received"], report["sent"], report["http-response-sent"],
                          report["duration"], report["connections"]), (3, 1, 1, 10000, 1))
        sub.messages.clear()
        clock.advance(30)  # 30 s on: conn and sub are sent again before their TTLs end
        clock.advance(10)
        while poller.poll(200):
            sub.drain()
        kinds = [kind for kind, _body in sub.messages]
        self.assertIn("conn", kinds)
        self.assertIn("sub", kinds)
