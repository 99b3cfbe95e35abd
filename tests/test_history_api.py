"""``GET /channels/{channel}/items`` on the publish port, through real sockets: the whole
server from tap.build_service, items published over HTTP; in memory, and shared by two
instances through a real Redis, across a restart."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from fanout_tx.grip.signature import encode_hs256
from tests.support.ops_fixtures import Server
from tests.support.services import RedisServer

HISTORY = "[history]\nmax_items=5\n"


async def publish(server: Server, channel: str, *numbers: int, **extra: Any) -> None:
    items = [{"channel": channel, "id": f"i{n}",
              "formats": {"http-stream": {"content": f"item {n}\n"},
                          "ws-message": {"content-bin": "AAE="}}, **extra}
             for n in numbers]
    code, body = await server.post_json("/publish/", {"items": items})
    assert code == 200, body


async def items(server: Server, path: str, **headers: str) -> tuple[int, Any]:
    response = await treq.get(server.url(path), headers=headers, persistent=False)
    body = await treq.content(response)
    is_json = response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    return response.code, json.loads(body) if is_json else body


class HistoryApiTests(TestCase):
    timeout = 30

    async def test_items_since_limit(self) -> None:
        """The newest items, the ones after ``since`` (paged by ``limit``), each as
        published; ``last-id`` says where to continue."""
        server = await Server(self).start(HISTORY)
        await publish(server, "a/b c", 1, 2, 3)
        path = "/channels/" + quote("a/b c", safe="") + "/items"
        code, answer = await items(server, path)
        self.assertEqual(code, 200)
        self.assertEqual([i["id"] for i in answer["items"]], ["i1", "i2", "i3"])
        self.assertEqual(answer["items"][0], {
            "channel": "a/b c", "id": "i1",
            "formats": {"http-stream": {"action": "send", "content": "item 1\n"},
                        "ws-message": {"action": "send", "type": "binary",
                                       "content-bin": "AAE="}}})
        code, answer = await items(server, path + "?since=i1&limit=1")
        self.assertEqual((code, [i["id"] for i in answer["items"]], answer["last-id"]),
                         (200, ["i2"], "i2"))
        code, answer = await items(server, path + "?since=i3")
        self.assertEqual((code, answer["items"], answer["last-id"]), (200, [], "i3"))

    async def test_refusals(self) -> None:
        """404 for a channel without history, 410 for an id older than it, 400 for bad
        parameters, 405 for other methods; each with a JSON reason."""
        server = await Server(self).start(HISTORY)
        await publish(server, "c", *range(1, 8))  # i1, i2 are gone (max_items = 5)
        self.assertEqual((await items(server, "/channels/none/items"))[0], 404)
        self.assertEqual((await items(server, "/channels/none/items?since=i1"))[0], 404)
        code, answer = await items(server, "/channels/c/items?since=i1")
        self.assertEqual(code, 410)
        self.assertIn("older than the history", answer["error"])
        for query in ("limit=0", "limit=x", "limit=1001", "since=", "since=a&since=b"):
            code, answer = await items(server, "/channels/c/items?" + query)
            self.assertEqual(code, 400, query)
            self.assertIn("error", answer)
        self.assertEqual((await items(server, "/channels/c"))[0], 404)
        self.assertEqual((await items(server, "/channels/c/items/x"))[0], 404)
        response = await treq.post(server.url("/channels/c/items"), b"", persistent=False)
        self.assertEqual(response.code, 405)
        await treq.content(response)

    async def test_publish_auth_applies(self) -> None:
        """With ``push_in_http_key`` set the history API needs the publish token too."""
        server = await Server(self).start(HISTORY + "[handler]\npush_in_http_key=k\n")
        code, _answer = await items(server, "/channels/c/items")
        self.assertEqual(code, 401)
        token = encode_hs256({"exp": 4_000_000_000}, b"k")
        code, _answer = await items(server, "/channels/c/items",
                                    Authorization=f"Bearer {token}")
        self.assertEqual(code, 404)

    async def test_off_by_default(self) -> None:
        """Without [history] there is no such page (the port is as before)."""
        server = await Server(self).start()
        await publish(server, "c", 1)
        response = await treq.get(server.url("/channels/c/items"), persistent=False)
        self.assertEqual((response.code, await treq.content(response)),
                         (404, b"Not Found\n"))


class SharedHistoryTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.redis = RedisServer(appendonly=True)
        self.addCleanup(self.redis.stop)

    async def instance(self) -> Server:
        server = await Server(self).start(
            HISTORY + f"[redis]\nurl={self.redis.url}\nprefix=h:\n")
        history = server.root.getServiceNamed("history")
        await history.when_up()
        await server.core.bus.when_up()
        return server

    async def test_two_instances_and_restarts(self) -> None:
        """Items published on instance A are in B's history, once each; after both
        instances and Redis restart, the history is still there."""
        a, b = await self.instance(), await self.instance()
        await publish(a, "c", 1, 2)
        await publish(b, "c", 3)

        async def ids_on(server: Server) -> list[str]:
            code, answer = await items(server, "/channels/c/items")
            return [i["id"] for i in answer["items"]] if code == 200 else []

        for server in (a, b):
            got: list[str] = []
            for _ in range(100):  # B's write reaches Redis on its own connection
                got = await ids_on(server)
                if got == ["i1", "i2", "i3"]:
                    break
                await deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(got, ["i1", "i2", "i3"])
        for server in (a, b):
            await server.root.stopService()
        self.redis.restart()
        c = await self.instance()
        code, answer = await items(c, "/channels/c/items?since=i1")
        self.assertEqual((code, [i["id"] for i in answer["items"]]), (200, ["i2", "i3"]))
