"""Built-in history on HTTP streams, SSE and long-polls, through real sockets: the whole
server from tap.build_service, a real origin, raw clients that disconnect and come back."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from tests.support import proxy_fixtures
from tests.support.helpers import RawClient, wait_until
from tests.support.ops_fixtures import Server

HISTORY = "[history]\nmax_items=5\n"


def event(number: int) -> str:
    return f"id: i{number}\ndata: {number}\n\n"


class HistoryHttpCase(TestCase):
    timeout = 30

    async def start(self, channel: str = "room", extra: str = HISTORY, **grip: str) -> Server:
        """A server whose origin holds ``/stream`` as an SSE stream on ``channel`` (the
        whole Grip-Channel value) and ``/lp`` as a long-poll, with ``grip`` headers."""
        server = await Server(self).start(extra)

        def stream(request: Request) -> bytes:
            request.setHeader(b"content-type", b"text/event-stream")
            return proxy_fixtures.grip(request, b":open\n\n", Grip_Hold="stream",
                                       Grip_Channel=channel, **grip)

        def poll(request: Request) -> bytes:
            return proxy_fixtures.grip(request, b"timed out\n", Grip_Hold="response",
                                       Grip_Channel=channel, Grip_Timeout="60", **grip)

        server.http_origin.handlers.update({b"/stream": stream, b"/lp": poll})
        self.server = server
        return server

    async def publish(self, *numbers: int, channel: str = "room", **extra: Any) -> None:
        items = []
        for n in numbers:
            item: dict[str, Any] = {
                "channel": channel, "id": f"i{n}",
                "formats": {"http-stream": {"content": event(n)},
                            "http-response": {"body": f"item {n}\n"}}}
            if n > 1 and extra.get("sequenced"):
                item["prev-id"] = f"i{n - 1}"
            items.append(item)
        code, body = await self.server.post_json("/publish/", {"items": items})
        self.assertEqual(code, 200, body)

    async def connect(self, path: str, **headers: str) -> RawClient:
        client = RawClient()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port).connect(
            Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: client.transport.loseConnection())
        lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
        client.transport.write(f"GET {path} HTTP/1.1\r\nHost: example\r\n{lines}\r\n".encode())
        return client

    async def events(self, client: RawClient, count: int) -> list[str]:
        """The ids of the first ``count`` events ``client`` got, once it has them."""
        def ids() -> list[str]:
            return [line[4:] for line in client.data.decode("latin-1").split("\n")
                    if line.startswith("id: ")]

        await wait_until(lambda: len(ids()) >= count, message=f"{count} events")
        return ids()

    async def disconnect(self, client: RawClient) -> None:
        client.transport.loseConnection()
        await client.closed
        await wait_until(lambda: self.server.core.router.subscriber_count() == 0)


class StreamResumeTests(HistoryHttpCase):
    async def test_last_event_id_resumes(self) -> None:
        """An SSE client that comes back with Last-Event-ID gets exactly the events it
        missed, in order, then live ones; the origin is asked once per connection."""
        await self.start()
        first = await self.connect("/stream")
        await self.server.held(1)
        await self.publish(1, 2)
        self.assertEqual(await self.events(first, 2), ["i1", "i2"])
        await self.disconnect(first)
        await self.publish(3, 4, 5)
        again = await self.connect("/stream", Last_Event_ID="i2")
        self.assertEqual(await self.events(again, 3), ["i3", "i4", "i5"])
        await self.publish(6)
        self.assertEqual(await self.events(again, 4), ["i3", "i4", "i5", "i6"])
        self.assertEqual(len(self.server.http_origin.requests), 2)
        self.assertEqual(again.data.count(b"id: i3"), 1)

    async def test_up_to_date_and_unknown_ids(self) -> None:
        """Nothing is replayed to a client that saw the last item, nor for an id older than
        history (today's behaviour: only live items)."""
        await self.start()
        await self.publish(*range(1, 9))  # i1-i3 are gone (max_items = 5)
        current = await self.connect("/stream", Last_Event_ID="i8")
        old = await self.connect("/stream", Last_Event_ID="i1")
        await self.server.held(2)
        await self.publish(9)
        self.assertEqual(await self.events(current, 1), ["i9"])
        self.assertEqual(await self.events(old, 1), ["i9"])

    async def test_rewind(self) -> None:
        """``Grip-Channel: room; history-rewind=2`` replays the newest two items."""
        await self.start(channel="room; history-rewind=2")
        await self.publish(1, 2, 3)
        client = await self.connect("/stream")
        self.assertEqual(await self.events(client, 2), ["i2", "i3"])
        await self.publish(4)
        self.assertEqual(await self.events(client, 3), ["i2", "i3", "i4"])

    async def test_history_since_named_by_the_instruction(self) -> None:
        """The backend may pass the client's position itself: ``history-since=ID``
        (whatever header or parameter the client sent it in)."""
        await self.start(channel="room; history-since=i1")
        await self.publish(1, 2, 3)
        client = await self.connect("/stream?last=i1")
        self.assertEqual(await self.events(client, 2), ["i2", "i3"])

    async def test_off_nothing_replayed(self) -> None:
        """With [history] off, Last-Event-ID and the extension parameters do nothing."""
        await self.start(channel="room; history-rewind=2", extra="")
        await self.publish(1, 2)
        client = await self.connect("/stream", Last_Event_ID="i1")
        await self.server.held(1)
        await self.publish(3)
        self.assertEqual(await self.events(client, 1), ["i3"])


class StreamPrevIdTests(HistoryHttpCase):
    async def test_prev_id_gap_filled_from_history(self) -> None:
        """A stream held with a prev-id behind the channel gets the gap from history at
        once, without the Grip-Link request to the origin."""
        await self.start(channel="room; prev-id=i2", Grip_Link="</next>; rel=next")
        await self.publish(1, 2, 3, 4, sequenced=True)
        client = await self.connect("/stream")
        self.assertEqual(await self.events(client, 2), ["i3", "i4"])
        await self.publish(5, sequenced=True)
        self.assertEqual(await self.events(client, 3), ["i3", "i4", "i5"])
        paths = [r.path for r in self.server.http_origin.requests]
        self.assertEqual(paths, [b"/stream"])

    async def test_gap_older_than_history_recovers_from_origin(self) -> None:
        """When the prev-id is no longer in history, the origin is asked (Grip-Link with
        Grip-Last), as without history."""
        await self.start(channel="room; prev-id=i1", Grip_Link="</next>; rel=next")
        origin = self.server.http_origin
        origin.handlers[b"/next"] = lambda request: proxy_fixtures.grip(
            request, event(100).encode())
        await self.publish(*range(1, 9), sequenced=True)  # i1 is gone
        client = await self.connect("/stream")
        await self.server.held(1)
        await self.publish(9, sequenced=True)
        await wait_until(lambda: len(origin.requests) == 2)
        self.assertEqual(origin.requests[1].path, b"/next")
        self.assertEqual(origin.header(1, "Grip-Last"), ["room; last-id=i1"])
        self.assertEqual(await self.events(client, 1), ["i100"])  # the origin's answer


class LongPollTests(HistoryHttpCase):
    async def test_behind_is_answered_from_history(self) -> None:
        """A poll whose prev-id is behind is answered at once with the next item from
        history; the origin is not asked again."""
        await self.start(channel="room; prev-id=i1")
        await self.publish(1, 2, 3)
        client = await self.connect("/lp")
        await wait_until(lambda: b"item 2\n" in client.data)
        self.assertIn(b"200 OK", client.data)
        self.assertEqual(len(self.server.http_origin.requests), 1)

    async def test_older_than_history_asks_the_origin(self) -> None:
        """A prev-id history no longer has: the origin is asked at once with Grip-Last,
        as Pushpin does (its answer this time holds)."""
        await self.start(channel="room; prev-id=i1")
        await self.publish(*range(1, 9))
        await self.connect("/lp")
        origin = self.server.http_origin
        await wait_until(lambda: len(origin.requests) == 2)
        self.assertEqual(origin.header(1, "Grip-Last"), ["room; last-id=i1"])
        await self.server.held(1)


class SharedStreamTests(HistoryHttpCase):
    """History in a real Redis, shared by two instances: the lookup is asynchronous, live
    items wait behind the replay."""

    timeout = 60

    async def test_resume_on_another_instance(self) -> None:
        """Items published on A are replayed to an SSE client that comes back on B, in
        order, then live ones from A."""
        from tests.support.services import RedisServer

        redis = RedisServer()
        self.addCleanup(redis.stop)
        extra = HISTORY + f"[redis]\nurl={redis.url}\nprefix=s:\n"
        a = await self.start(extra=extra)
        b = await self.start(extra=extra)
        for server in (a, b):
            await server.root.getServiceNamed("history").when_up()
            await server.core.bus.when_up()
        self.server = a
        await self.publish(1, 2, 3)
        await wait_until(lambda: b.core.router.last_id("room") == "i3")
        self.server = b
        client = await self.connect("/stream", Last_Event_ID="i1")
        self.assertEqual(await self.events(client, 2), ["i2", "i3"])
        self.server = a
        await self.publish(4)
        self.assertEqual(await self.events(client, 3), ["i2", "i3", "i4"])
        self.assertEqual(client.data.count(b"id: i"), 3)
