"""Hostile publishers against the whole server (issue #13, item 2): one bad message is that
message's error on every input (real ZeroMQ PUSH/PUB/REQ sockets, real HTTP, real Redis),
the input reads on, the bad one is counted in /metrics, and /health reports an input whose
reader is gone."""

from __future__ import annotations

import json
from typing import Any

import treq
import zmq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.codecs.item_codec import encode_items
from fanout_tx.core.items import Item, parse_item
from tests.support.helpers import RawClient, RecordingSubscriber, wait_until
from tests.support.ops_fixtures import Server, StatsSubscriber
from tests.support.services import RedisServer

# Valid JSON whose string is not Unicode text: the content held a lone surrogate.
SURROGATE_ITEM = b'{"channel":"room","formats":{"http-stream":{"content":"\\ud800"}}}'


def stream_item(content: str, channel: str | None = "room") -> bytes:
    item: dict[str, Any] = {"formats": {"http-stream": {"content": content}}}
    if channel is not None:
        item["channel"] = channel
    return json.dumps(item).encode()


def errors(samples: dict[Any, float], name: str) -> float:
    return samples[("fanout_publish_errors_total", (("input", name),))]


class _Hostile(TestCase):
    timeout = 60

    async def server(self, extra: str = "") -> Server:
        return await Server(self).start(extra)

    def zmq_socket(self, kind: int) -> zmq.Socket:
        context = zmq.Context()
        self.addCleanup(context.term)
        sock = context.socket(kind)
        self.addCleanup(sock.close, 0)
        return sock

    async def stream(self, server: Server) -> RawClient:
        """A client holding a stream on ``room`` through the proxy."""
        client = await server.raw("/stream")
        await server.held(1)
        return client

    async def delivered(self, client: RawClient, content: bytes) -> None:
        await wait_until(lambda: content in client.data)

    async def sub_connected(self, server: Server, client: RawClient) -> zmq.Socket:
        """A PUB socket into the SUB input, sending probes on ``room`` until one reaches
        ``client`` (PUB drops what it sends before the subscription has reached it)."""
        pub = self.zmq_socket(zmq.PUB)
        pub.connect(server.root.getServiceNamed("zmq-sub").endpoints[0])
        for probe in range(500):
            pub.send_multipart([b"room", b"J" + stream_item(f"probe {probe}\n", None)])
            await deferLater(reactor, 0.01, lambda: None)
            if b"probe" in client.data:
                return pub
        self.fail("the SUB input never received a probe")


class ZmqPullTests(_Hostile):
    async def test_lone_surrogate_then_good_item(self) -> None:
        """The issue's message: dropped with a reason and counted; the PULL input reads on
        (the next item reaches the held client) and /health stays 200."""
        server = await self.server()
        client = await self.stream(server)
        pull = server.root.getServiceNamed("zmq-pull")
        push = self.zmq_socket(zmq.PUSH)
        push.connect(pull.endpoints[0])
        push.send(b"J" + SURROGATE_ITEM)
        push.send(b"J" + stream_item("after the bad one\n"))
        await self.delivered(client, b"after the bad one\n")
        self.assertNotIn(b"\xed", client.data)
        self.assertEqual(errors(await server.metrics(), "zmq-pull"), 1)
        code, body = await server.get("/health")
        self.assertEqual((code, json.loads(body)["services"]["zmq-pull"]["state"]), (200, "up"))

    async def test_any_exception_is_the_message_error(self) -> None:
        """Whatever a message raises while being handled (here a parser bug, simulated) is
        logged and counted, and the next message is still read."""
        server = await self.server()
        client = await self.stream(server)
        pull = server.root.getServiceNamed("zmq-pull")
        parse = pull._parse

        def buggy(parts: list[bytes]) -> Item:
            if parts == [b"boom"]:
                raise RuntimeError("a parser bug")
            return parse(parts)

        pull._parse = buggy
        push = self.zmq_socket(zmq.PUSH)
        push.connect(pull.endpoints[0])
        push.send(b"boom")
        push.send(b"J" + stream_item("still reading\n"))
        await self.delivered(client, b"still reading\n")
        self.assertEqual(errors(await server.metrics(), "zmq-pull"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ZmqSubTests(_Hostile):
    async def test_lone_surrogate_then_good_item(self) -> None:
        """The same on the SUB input: [channel, payload] with a bad payload is dropped and
        counted, the next one is delivered."""
        server = await self.server()
        client = await self.stream(server)
        pub = await self.sub_connected(server, client)
        pub.send_multipart([b"room", b"J" + SURROGATE_ITEM])
        pub.send_multipart([b"room", b"J" + stream_item("after the bad one\n", None)])
        await self.delivered(client, b"after the bad one\n")
        self.assertEqual(errors(await server.metrics(), "zmq-sub"), 1)

    async def test_unencodable_channel_is_not_subscribed(self) -> None:
        """A channel name that cannot be a ZeroMQ topic (a lone surrogate, from anywhere that
        does not refuse it) is skipped with a warning: the subscribe completes, and the SUB
        input keeps subscribing other channels."""
        server = await self.server()
        server.core.router.subscribe("bad\udc80", RecordingSubscriber())
        client = await self.stream(server)  # subscribes the SUB socket to "room"
        await self.sub_connected(server, client)
        self.assertEqual(server.core.router.channels(), frozenset({"bad\udc80", "room"}))

    async def test_unencodable_channel_in_stats(self) -> None:
        """The stats socket cannot encode such a channel in tnetstring either: that one
        message is dropped and logged, the subscribe completes, and stats go on."""
        server = await self.server("[handler]\nstats_spec=tcp://127.0.0.1:*\n"
                                   "stats_report_interval=1\n")
        stats = StatsSubscriber(self, server.root.getServiceNamed("stats").endpoint)
        await stats.wait("report")
        server.core.router.subscribe("bad\udc80", RecordingSubscriber())
        await self.stream(server)
        await stats.wait("sub", channel="room")
        self.assertEqual(len(self.flushLoggedErrors(UnicodeEncodeError)), 1)

    async def test_lone_surrogate_instruct_channel_refused(self) -> None:
        """A grip-instruct hold on a channel with a lone surrogate is a bad instruction
        (502) at instruction time; nothing is subscribed and other clients are served."""

        def bad_instruct(request: Request) -> bytes:
            request.setHeader(b"content-type", b"application/grip-instruct")
            return (b'{"hold": {"mode": "stream", "channels": [{"name": "x\\ud800"}]},'
                    b' "response": {"body": "open\\n"}}')

        server = await self.server()
        server.http_origin.handlers[b"/bad"] = bad_instruct
        bad = await server.raw("/bad")
        await wait_until(lambda: b"\r\n\r\n" in bad.data)
        self.assertTrue(bad.data.startswith(b"HTTP/1.1 502"), bad.data[:80])
        self.assertEqual(server.core.router.channels(), frozenset())
        client = await self.stream(server)
        await server.publish(**{"http-stream": {"content": "others served\n"}})
        await self.delivered(client, b"others served\n")


class ZmqCommandTests(_Hostile):
    async def test_failing_request_still_answered(self) -> None:
        """A request whose handling raises gets an error reply (a REP socket that skipped one
        would never read again), is counted, and the next request is answered."""
        server = await self.server("[handler]\ncommand_spec=tcp://127.0.0.1:*\n")
        command = server.root.getServiceNamed("zmq-command")

        def broken() -> int:
            raise RuntimeError("a recover bug")

        command._recover = broken
        req = self.zmq_socket(zmq.REQ)
        req.setsockopt(zmq.RCVTIMEO, 5000)
        req.connect(command.endpoints[0])
        replies = []
        for method in (b"recover", b"get-zmq-uris"):
            req.send(tnetstring.dumps({b"method": method}))
            await wait_until(lambda: req.poll(0, zmq.POLLIN))
            replies.append(tnetstring.loads(req.recv()))
        self.assertEqual(replies[0], {b"success": False, b"condition": b"internal-server-error"})
        self.assertTrue(replies[1][b"success"])
        self.assertEqual(errors(await server.metrics(), "zmq-command"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HttpTests(_Hostile):
    async def test_lone_surrogates_anywhere_are_400(self) -> None:
        """A lone surrogate in content, channel, id, meta or a header is a 400 naming it,
        not a 500; each is counted, and the next good publish is delivered."""
        server = await self.server()
        client = await self.stream(server)
        bodies = [
            b'{"items": [' + SURROGATE_ITEM + b"]}",
            b'{"items": [{"channel": "\\udc00", "formats": {"http-stream": {"content": "x"}}}]}',
            b'{"items": [{"channel": "room", "id": "\\ud800",'
            b' "formats": {"http-stream": {"content": "x"}}}]}',
            b'{"items": [{"channel": "room", "meta": {"a": "\\udbff"},'
            b' "formats": {"http-stream": {"content": "x"}}}]}',
            b'{"items": [{"channel": "room", "formats": {"http-response":'
            b' {"headers": {"X-A": "\\ud800"}, "body": "x"}}}]}',
        ]
        for body in bodies:
            code, answer = await self.post(server, body)
            self.assertEqual(code, 400, answer)
            self.assertIn(b"lone surrogate", answer)
        self.assertEqual(errors(await server.metrics(), "http"), len(bodies))
        await server.publish(**{"http-stream": {"content": "good\n"}})
        await self.delivered(client, b"good\n")

    async def post(self, server: Server, body: bytes) -> tuple[int, bytes]:
        response = await treq.post(server.url("/publish/"), body, persistent=False)
        return response.code, await treq.content(response)


class RedisTests(_Hostile):
    async def test_bad_stream_entry_dropped_and_counted(self) -> None:
        """An entry another instance wrote that does not decode (a lone surrogate, an invalid
        batch, a broken entry number) is logged and counted; the reader goes on and delivers
        the next entry."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        server = await self.server(f"[redis]\nurl={redis.url}\n")
        await server.core.bus.when_up()
        client = await self.stream(server)

        async def entry(payload: bytes, number: Any = None) -> None:
            if number is None:
                number = await server.core.bus.command("INCR", "fanout_tx:items:count")
            await server.core.bus.command("XADD", "fanout_tx:items", "*", "o", "other",
                                          "s", number, "d", payload)

        def shared(content: str, **meta: str) -> bytes:
            item = parse_item({"channel": "room", "formats": {"http-stream": {
                "content": content}}})
            return encode_items([Item(item.channel, item.formats, meta=meta)])

        await entry(shared("bad\n", m="\udfff"))  # as an older instance shared it
        await entry(b'{"v": 1, "items": [{"channel": 1}]}')
        await entry(shared("odd\n"), number="not a number")
        await entry(shared("good\n"))
        await self.delivered(client, b"good\n")
        self.assertNotIn(b"bad\n", client.data)
        self.assertNotIn(b"odd\n", client.data)
        self.assertEqual(errors(await server.metrics(), "redis"), 3)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # the entry number


class HealthTests(_Hostile):
    async def health(self, server: Server) -> tuple[int, dict[str, Any]]:
        code, body = await server.get("/health")
        return code, json.loads(body)

    async def test_reader_removed_from_reactor(self) -> None:
        """An input whose reader is no longer in the reactor reads nothing: 503, the input
        named down with the reason."""
        server = await self.server()
        self.assertEqual((await self.health(server))[0], 200)
        reactor.removeReader(server.root.getServiceNamed("zmq-pull"))
        code, body = await self.health(server)
        self.assertEqual((code, body["status"]), (503, "down"))
        state = body["services"]["zmq-pull"]
        self.assertEqual((state["state"], state["error"]),
                         ("down", "reader removed from the reactor"))
        self.assertEqual(body["services"]["zmq-sub"]["state"], "up")

    async def test_reader_dropped_after_an_exception(self) -> None:
        """When doRead raises all the same (here: the socket fails), the reactor drops the
        reader; health reports it lost, with the error."""
        server = await self.server()
        client = await self.stream(server)
        pub = await self.sub_connected(server, client)
        sub = server.root.getServiceNamed("zmq-sub")

        def failing() -> None:
            raise zmq.ZMQError(zmq.EFAULT)

        sub.doRead = failing
        for _ in range(500):
            pub.send_multipart([b"room", b"J" + stream_item("x\n", None)])
            await deferLater(reactor, 0.01, lambda: None)
            if sub.problem() is not None:
                break
        code, body = await self.health(server)
        self.assertEqual(code, 503)
        self.assertEqual(body["services"]["zmq-sub"]["error"],
                         f"reader lost: {zmq.strerror(zmq.EFAULT)}")
        self.assertEqual(len(self.flushLoggedErrors(zmq.ZMQError)), 1)

