"""``[runner] workers = 2`` end to end: ``twistd -n fanout`` as a subprocess (a supervisor and
two workers), real origins, real clients spread over both workers (read from /proc: which
worker holds each connection), items published through every input."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import treq
import zmq
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Request, Site

from fanout_tx.cluster.redis_bus import RedisBus
from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from tests.support import proxy_fixtures
from tests.support.helpers import RawClient, wait_until, with_deadline
from tests.support.ops_fixtures import hold
from tests.support.services import RedisServer, free_port
from tests.support.twistd import start_twistd, until_healthy, write_config
from tests.support.workers import children, owner
from tests.support.ws import ClientSide, WsGripOrigin, WsOverHttpOrigin, grip_echo, listen_endpoint

C = TypeVar("C")
FORMATS = ("http-stream", "http-response", "ws")


def prev(request: Request) -> bytes:
    """``/prev``: a long-poll on ``news`` behind the channel (prev-id ``old``); asked
    again with Grip-Last, the origin answers at once."""
    if request.getHeader("grip-last") is not None:
        return b"recovered\n"
    return proxy_fixtures.grip(request, b"timed out\n", Grip_Hold="response",
                               Grip_Channel="news; prev-id=old", Grip_Timeout="300")


def item(channel: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"channel": channel, **fields, "formats": {
        "http-stream": {"content": text + "\n"},
        "http-response": {"body": text + "\n"},
        "ws-message": {"content": text}}}


class WorkersTests(TestCase):
    timeout = 120

    async def start_server(self, extra: str = "") -> None:
        self.http_origin = proxy_fixtures.HttpOrigin()
        self.http_origin.handlers = {b"/lp": hold, b"/stream": hold, b"/prev": prev}
        ws_origin = WebSocketServerFactory()
        ws_origin.protocol = WsGripOrigin
        ws_origin.requests, ws_origin.closes, ws_origin.closed_waiter = [], [], None
        ports = []
        for factory in (Site(self.http_origin), Site(WsOverHttpOrigin(grip_echo)), ws_origin):
            port = await listen_endpoint().listen(factory)
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        self.http_origin_port = ports[0]
        self.publish_port = free_port()
        self.folder = folder = Path(self.mktemp())
        config = write_config(folder, (
            "[runner]\nhttp_port=127.0.0.1:0\nshutdown_timeout=5\n"
            "[proxy]\nroutesfile=routes\n"
            "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
            f"push_in_http_addr=127.0.0.1\npush_in_http_port={self.publish_port}\n"
            "command_spec=tcp://127.0.0.1:*\nsubscription_linger=0\n"
            "stats_spec=tcp://127.0.0.1:*\nstats_format=json\n"
            "[webhooks]\nenabled=false\n" + extra
        ), routes=(f"*,path_beg=/ws 127.0.0.1:{ports[1]},over_http\n"
                   f"*,path_beg=/grip 127.0.0.1:{ports[2]}\n"
                   f"* 127.0.0.1:{ports[0]}\n"), workers=2)
        self.process, self.output = start_twistd(self, config)
        self.health = await self.until_healthy()
        self.port = int(self.health["http-proxy"]["listening"][0].rsplit(":", 1)[1])
        self.workers = children(self.process.pid)
        self.assertEqual(len(self.workers), 2, self.log())

    def log(self) -> str:
        return self.output.output.decode(errors="replace")

    async def until_healthy(self) -> dict[str, Any]:
        return await until_healthy(self, self.output, self.publish_port)

    async def metrics(self) -> dict[str, float]:
        response = await treq.get(f"http://127.0.0.1:{self.publish_port}/metrics",
                                  persistent=False)
        samples = {}
        for line in (await treq.text_content(response)).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    async def until_connections(self, **expected: int) -> None:
        """/metrics (every worker's, summed) shows ``expected`` connections per transport."""
        wanted = {f'fanout_connections{{transport="{name.replace("_", "-")}"}}': float(count)
                  for name, count in expected.items()}
        deadline = reactor.seconds() + 20
        while True:
            samples = await self.metrics()
            if all(samples.get(name) == count for name, count in wanted.items()):
                return
            self.assertLess(reactor.seconds(), deadline, (wanted, samples))
            await deferLater(reactor, 0.1, lambda: None)

    async def spread(self, open_one: Callable[[], Awaitable[tuple[C, int]]]) -> list[C]:
        """Clients opened until both workers hold at least one (each connection lands on a
        worker by the kernel's hash of its addresses)."""
        clients, owners = [], set()
        while len(owners) < 2:
            self.assertLess(len(clients), 24, "every connection landed on one worker")
            client, local_port = await open_one()
            clients.append(client)
            await wait_until(lambda p=local_port: self.owner(p) is not None,
                             message="no worker accepted the connection")
            owners.add(self.owner(local_port))
        return clients

    def owner(self, local_port: int) -> int | None:
        """The worker holding the client connection from ``local_port``."""
        return owner(self.workers, local_port, self.port)

    async def raw(self, path: str, extra_headers: str = "") -> tuple[RawClient, int]:
        client = RawClient()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(
            Factory.forProtocol(lambda: client))
        self.addCleanup(self.abort, client.transport, client.closed)
        client.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: example\r\n{extra_headers}\r\n".encode())
        return client, client.transport.getHost().port

    @staticmethod
    def abort(transport: Any, closed: Deferred[Any]) -> Deferred[Any]:
        """A client still connected at the end of a test is cut off."""
        if not closed.called:
            transport.abortConnection()
        return closed

    async def stream(self) -> tuple[RawClient, int]:
        client, port = await self.raw("/stream")
        await wait_until(lambda: b"stream open\n" in client.data)
        return client, port

    async def websocket(self, path: str) -> tuple[ClientSide, int]:
        side = ClientSide(f"ws://127.0.0.1:{self.port}{path}")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(side)
        await with_deadline(side.opened, "ws open")
        self.addCleanup(self.abort, side.client.transport, side.closed)
        side.client.sendMessage(b"sub:room")
        await side.wait_messages(1)
        return side, side.client.transport.getHost().port

    async def publish_http(self, *items: dict[str, Any]) -> None:
        response = await treq.post(f"http://127.0.0.1:{self.publish_port}/publish/",
                                   json.dumps({"items": list(items)}).encode(),
                                   headers={"Content-Type": ["application/json"]},
                                   persistent=False)
        self.assertEqual(response.code, 200, await treq.content(response))

    def zmq_socket(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.addCleanup(sock.close)
        sock.connect(endpoint)
        return sock

    async def test_every_client_gets_every_item_once_from_every_input(self) -> None:
        """Streams, long-polls, WebSockets and WebSocket-over-HTTP clients on both workers
        each get every item once, whether published through the HTTP API, ZeroMQ PULL or
        ZeroMQ SUB (subscribed to the workers' channels); the command socket's recover
        reaches every worker's sessions; /metrics sums the workers; SIGTERM drains both."""
        await self.start_server()
        streams = await self.spread(self.stream)
        sockets = await self.spread(lambda: self.websocket("/grip/x"))
        over_http = await self.spread(lambda: self.websocket("/ws/chat"))
        websockets = sockets + over_http
        polls: list[RawClient] = []

        async def new_polls() -> None:
            polls[:] = await self.spread(lambda: self.raw("/lp"))
            await self.until_connections(http_stream=len(streams), http_response=len(polls),
                                         ws=len(websockets))

        services = self.health
        pull = self.zmq_socket(zmq.PUSH, services["zmq-pull"]["endpoints"][0])
        pub = self.zmq_socket(zmq.XPUB, services["zmq-sub"]["endpoints"][0])
        # The SUB input subscribed to "room" because the workers' clients hold it.
        await wait_until(lambda: pub.poll(0, zmq.POLLIN), message="no subscription")
        self.assertEqual(pub.recv(), b"\x01room")
        senders = {
            "via-http": lambda text: self.publish_http(item("room", text, id=text)),
            "via-pull": lambda text: pull.send(b"J" + json.dumps(item("room", text,
                                                                   id=text)).encode()),
            "via-sub": lambda text: pub.send_multipart(
                [b"room", b"J" + json.dumps(item("room", text, id=text)).encode()]),
        }
        for number, (text, send) in enumerate(senders.items(), start=1):
            await new_polls()
            answered = polls[:]
            result = send(text)
            if inspect.isawaitable(result):  # the HTTP API's answer
                await result
            for poll in answered:  # answered (and kept alive)
                await wait_until(lambda p=poll, t=text: f"{t}\n".encode() in p.data,
                                 message=f"a long-poll did not get {text}")
            for stream in streams:
                await wait_until(lambda s=stream, t=text: f"{t}\n".encode() in s.data)
            for side in websockets:
                await side.wait_messages(1 + number)
        for stream in streams:
            self.assertEqual([stream.data.count(f"{text}\n".encode()) for text in senders],
                             [1, 1, 1], stream.data)
        for side in websockets:
            self.assertEqual(side.messages[1:], [(text.encode(), False) for text in senders])

        await new_polls()
        requests = len(self.http_origin.requests)
        command = self.zmq_socket(zmq.REQ, services["zmq-command"]["endpoints"][0])
        command.send(tnetstring.dumps({b"method": b"recover"}))
        await wait_until(lambda: command.poll(0, zmq.POLLIN))
        self.assertEqual(tnetstring.loads(command.recv())[b"success"], True)
        # every long-poll (on both workers) asks its origin again
        await wait_until(lambda: len(self.http_origin.requests) >= requests + len(polls),
                         message="not every long-poll recovered")

        self.process.signalProcess("TERM")
        ended = await with_deadline(self.output.ended, "twistd did not exit")
        self.assertIsInstance(ended, ProcessDone, self.log())
        for stream in streams:
            body = await with_deadline(stream.closed, "stream end")
            self.assertTrue(body.endswith(b"0\r\n\r\n"), body)
        for side in websockets:
            self.assertEqual((await with_deadline(side.closed, "ws close"))[:2], (True, 1001))

    async def test_sequencing_recovery_and_a_killed_worker(self) -> None:
        """Items out of order are put in order, and a repeated id dropped, on both workers;
        a long-poll behind the channel's last id recovers (Grip-Last) on either; the stats
        socket reports both workers' connections; a worker killed with SIGKILL leaves the
        other's clients connected and is back at once, knowing the channels' last ids."""
        await self.start_server()
        stats_endpoint = re.search(r"stats (tcp://[0-9.:]+)", self.log())
        assert stats_endpoint is not None
        stats = self.zmq_socket(zmq.SUB, stats_endpoint[1])
        stats.setsockopt(zmq.SUBSCRIBE, b"conn ")
        await deferLater(reactor, 0.2, lambda: None)  # the SUB's connect and subscription
        streams = await self.spread(self.stream)
        await self.until_connections(http_stream=len(streams))
        # The stats socket reports the connections of both workers, each as its own source.
        reporters = set()
        while stats.poll(0, zmq.POLLIN):
            reporters.add(json.loads(stats.recv()[len(b"conn J"):])["from"])
        self.assertEqual(len(reporters), 2, reporters)
        await self.publish_http(item("room", "zero", id="0"))
        await self.publish_http(item("room", "second", id="2", **{"prev-id": "1"}))
        await self.publish_http(item("room", "first", id="1", **{"prev-id": "0"}))
        await self.publish_http(item("room", "first", id="1", **{"prev-id": "0"}))
        for stream in streams:
            await wait_until(lambda s=stream: b"second\n" in s.data)
            self.assertEqual(stream.data.count(b"first\n"), 1, stream.data)
            self.assertLess(stream.data.index(b"first\n"), stream.data.index(b"second\n"))

        await self.publish_http({"channel": "news", "id": "new-1",
                                 "formats": {"http-response": {"body": "x"}}})
        polls = await self.spread(lambda: self.raw("/prev"))
        for poll in polls:
            await wait_until(lambda p=poll: b"recovered\n" in p.data,
                             message="a long-poll did not recover")

        victim = self.owner(streams[0].transport.getHost().port)
        assert victim is not None
        survivors = [s for s in streams if self.owner(s.transport.getHost().port) != victim]
        killed = reactor.seconds()
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: len(set(children(self.process.pid)) - {victim}) == 2,
                         timeout=1.0, message="no new worker")
        await self.until_healthy()
        serving = reactor.seconds() - killed
        self.assertIn(f"worker {self.workers.index(victim)} ended", self.log())
        await self.publish_http(item("room", "after", id="3"))
        for stream in survivors:
            await wait_until(lambda s=stream: b"after\n" in s.data)
            self.assertFalse(stream.closed.called)
        self.assertLess(serving, 10, "the new worker took too long to serve")
        # The new worker knows the channels' last ids: its long-polls recover as the other's.
        self.workers = children(self.process.pid)
        polls = await self.spread(lambda: self.raw("/prev"))
        for poll in polls:
            await wait_until(lambda p=poll: b"recovered\n" in p.data,
                             message="a long-poll on the new worker did not recover")



    async def test_sighup_reloads_the_routes_of_every_worker(self) -> None:
        """SIGHUP to the supervisor reaches both workers (each says its routes file is
        unchanged); after a change, requests on both workers go to the new origin."""
        await self.start_server()
        self.process.signalProcess("HUP")
        await wait_until(lambda: all(f"worker {n}: SIGHUP: the routes file is unchanged"
                                     in self.log() for n in (0, 1)),
                         message="SIGHUP did not reach both workers")
        other = proxy_fixtures.HttpOrigin()
        other.handlers = {b"/plain": lambda _request: b"from the new origin\n"}
        port = await listen_endpoint().listen(Site(other))
        self.addCleanup(port.stopListening)
        routes = self.folder / "routes"
        routes.write_text(routes.read_text().replace(
            f"* 127.0.0.1:{self.http_origin_port}", f"* 127.0.0.1:{port.getHost().port}"))
        self.process.signalProcess("HUP")

        async def answered() -> tuple[RawClient, int]:
            client, local_port = await self.raw("/plain")
            await wait_until(lambda: b"from the new origin\n" in client.data,
                             message="a request went to the old origin")
            return client, local_port

        await wait_until(lambda: all(f"worker {n}: routes reloaded" in self.log()
                                     for n in (0, 1)), message="the workers did not reload")
        await self.spread(answered)

    async def test_redis_shares_with_other_machines(self) -> None:
        """With Redis: items another instance publishes reach the clients on both workers
        once; the machine's own publishes do too (it is one instance towards the others)."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        await self.start_server(f"[redis]\nurl={redis.url}\nprefix=w:\n")
        other = RedisBus(Router(reactor), reactor, parse_redis_url(redis.url), "w:")
        other.startService()
        self.addCleanup(other.stopService)
        await with_deadline(other.when_up(), "the other instance has no Redis")
        streams = await self.spread(self.stream)
        await self.until_connections(http_stream=len(streams))
        await self.publish_http(item("room", "from here", id="h"))
        await other.publish([parse_item(item("room", "from elsewhere", id="e"))], "http")
        for stream in streams:
            await wait_until(lambda s=stream: b"from elsewhere\n" in s.data)
            await wait_until(lambda s=stream: b"from here\n" in s.data)
            self.assertEqual((stream.data.count(b"from here\n"),
                              stream.data.count(b"from elsewhere\n")), (1, 1), stream.data)

    async def resume_on_both_workers(self, extra: str) -> None:
        """Items published before any client exists are in every worker's view of the
        history: SSE clients reconnecting with ``Last-Event-ID`` on either worker get exactly
        the items after it, in order, then live ones, each once."""
        await self.start_server("[history]\nmax_items=100\n" + extra)
        for number in range(1, 4):
            await self.publish_http(item("room", f"missed-{number}", id=f"m{number}"))

        async def resumed() -> tuple[RawClient, int]:
            client, local_port = await self.raw("/stream", "Last-Event-ID: m1\r\n")
            await wait_until(lambda: b"missed-3\n" in client.data,
                             message="a resumed stream did not get the missed items")
            return client, local_port

        streams = await self.spread(resumed)
        await self.publish_http(item("room", "live", id="m4"))
        for stream in streams:
            await wait_until(lambda s=stream: b"live\n" in s.data)
            body = stream.data[stream.data.index(b"stream open\n"):]
            self.assertEqual(re.findall(rb"missed-\d|live", body),
                             [b"missed-2", b"missed-3", b"live"], stream.data)

    async def test_history_in_memory_resumes_on_either_worker(self) -> None:
        """Every worker gets every item in the same order, so each keeps the same history."""
        await self.resume_on_both_workers("")

    async def test_history_in_redis_resumes_on_either_worker(self) -> None:
        """With Redis the supervisor writes the history once and both workers read it."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        await self.resume_on_both_workers(f"[redis]\nurl={redis.url}\nprefix=h:\n")
