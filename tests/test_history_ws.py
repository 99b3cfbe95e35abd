"""Built-in history on WebSockets, both modes, through real sockets: the whole server from
tap.build_service, a WebSocket-over-HTTP origin and a WebSocket origin, real autobahn
clients that disconnect and come back with ``since``/``rewind`` in their subscribe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase
from typing_extensions import override

from fanout_tx.tap import build_service, listening_port, load_settings
from fanout_tx.transports.ws import events as ev
from tests.support.helpers import wait_until
from tests.support.twistd import write_config
from tests.support.ws import ClientSide, WsOverHttpOrigin, events_reply, listen_endpoint

EXTENSION = 'grip; history-id-prefix="id:"'


def control(request: str) -> bytes:
    """``sub:CHANNEL[:since:ID|:rewind:N]`` from the client -> the origin's subscribe."""
    channel, _, rest = request[4:].partition(":")
    message: dict[str, Any] = {"type": "subscribe", "channel": channel}
    kind, _, value = rest.partition(":")
    if kind == "since":
        message["since"] = value
    elif kind == "rewind":
        message["rewind"] = int(value)
    return b"c:" + json.dumps(message).encode()


def over_http_answer(events: list[ev.Event], headers: dict[str, str]) -> tuple:
    out = []
    for event in events:
        if event.name == "OPEN":
            out.append(ev.Event("OPEN"))
        elif event.name == "TEXT" and event.content.startswith(b"sub:"):
            out.append(ev.Event("TEXT", b"m:subscribed"))  # before: a replay is at once
            out.append(ev.Event("TEXT", control(event.content.decode())))
    return events_reply(*out, headers=[("Sec-WebSocket-Extensions", EXTENSION)])


class NativeOrigin(WebSocketServerProtocol):
    """A WebSocket origin speaking the same little protocol."""

    @override
    def onConnect(self, request: ConnectionRequest) -> Any:  # noqa: N802
        return None, {"Sec-WebSocket-Extensions": EXTENSION}

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if payload.startswith(b"sub:"):
            self.sendMessage(b"m:subscribed")
            self.sendMessage(control(payload.decode()))


class HistoryWsTests(TestCase):
    timeout = 30

    async def start(self, history: bool = True) -> None:
        over_http = WsOverHttpOrigin(over_http_answer)
        from twisted.web.server import Site
        port = await listen_endpoint().listen(Site(over_http))
        self.addCleanup(port.stopListening)
        native_factory = WebSocketServerFactory()
        native_factory.protocol = NativeOrigin
        native = await listen_endpoint().listen(native_factory)
        self.addCleanup(native.stopListening)
        routes = (f"*,path_beg=/http 127.0.0.1:{port.getHost().port},over_http\n"
                  f"*,path_beg=/native 127.0.0.1:{native.getHost().port}\n")
        config = write_config(Path(self.mktemp()), (
            "[runner]\nhttp_port=127.0.0.1:0\n[proxy]\nroutesfile=routes\n"
            "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
            "push_in_http_addr=127.0.0.1\npush_in_http_port=0\n[webhooks]\nenabled=false\n"
            + ("[history]\nmax_items=5\n" if history else "")), routes=routes)
        self.root, self.core = build_service(load_settings(str(config)), reactor)
        self.root.startService()
        self.addCleanup(self.root.stopService)
        proxy = next(iter(self.root.getServiceNamed("http-proxy")))
        self.port = (await listening_port(proxy)).getHost().port
        publish = self.root.getServiceNamed("publish-http")
        self.publish_url = (f"http://127.0.0.1:"
                            f"{(await listening_port(publish)).getHost().port}/publish/")

    async def publish(self, *numbers: int) -> None:
        items = [{"channel": "room", "id": f"i{n}",
                  "formats": {"ws-message": {"content": f"item {n}"}}} for n in numbers]
        response = await treq.post(self.publish_url, json.dumps({"items": items}).encode(),
                                   persistent=False)
        self.assertEqual(response.code, 200, await treq.content(response))

    async def client(self, path: str, subscribe: str) -> ClientSide:
        side = ClientSide(f"ws://127.0.0.1:{self.port}{path}")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(side)
        await side.opened
        self.addCleanup(self._close, side)
        assert side.client is not None
        side.client.sendMessage(subscribe.encode())
        return side

    async def _close(self, side: ClientSide) -> None:
        if side.client is not None and not side.closed.called:
            side.client.sendClose(1000)
            await side.closed

    async def texts(self, side: ClientSide, count: int) -> list[str]:
        """The text messages after "subscribed", once there are ``count`` of them."""
        def texts() -> list[str]:
            got = [payload.decode() for payload, _binary in side.messages]
            return got[got.index("subscribed") + 1:] if "subscribed" in got else []

        await wait_until(lambda: len(texts()) >= count, message=f"{count} messages")
        return texts()

    async def resume(self, path: str) -> None:
        """Disconnect, publish, reconnect with the last id: exactly the missed messages,
        each after its id, then live ones; an id older than history: live ones only;
        rewind: the newest N."""
        await self.start()
        first = await self.client(path, "sub:room")
        await wait_until(lambda: self.core.router.subscriber_count() == 1)
        await self.publish(1, 2)
        self.assertEqual(await self.texts(first, 4), ["id:i1", "item 1", "id:i2", "item 2"])
        await self._close(first)
        await wait_until(lambda: self.core.router.subscriber_count() == 0)
        await self.publish(3, 4)
        again = await self.client(path, "sub:room:since:i2")
        self.assertEqual(await self.texts(again, 4), ["id:i3", "item 3", "id:i4", "item 4"])
        await self.publish(5)
        self.assertEqual((await self.texts(again, 6))[4:], ["id:i5", "item 5"])
        await self.publish(6, 7, 8, 9)  # i1-i4 are gone now (max_items = 5)
        old = await self.client(path, "sub:room:since:i1")
        rewind = await self.client(path, "sub:room:rewind:2")
        self.assertEqual(await self.texts(rewind, 4), ["id:i8", "item 8", "id:i9", "item 9"])
        await wait_until(lambda: self.core.router.subscriber_count() == 3)
        await self.publish(10)
        self.assertEqual(await self.texts(old, 2), ["id:i10", "item 10"])
        self.assertEqual(len(await self.texts(again, 16)), 16)  # each item once

    async def test_ws_over_http(self) -> None:
        """WebSocket-over-HTTP: resume with since, fall back, rewind."""
        await self.resume("/http/chat")

    async def test_ws_proxy(self) -> None:
        """Proxied WebSocket: the same."""
        await self.resume("/native/chat")

    async def test_off(self) -> None:
        """With [history] off, since/rewind and history-id-prefix do nothing."""
        await self.start(history=False)
        await self.publish(1)
        side = await self.client("/http/chat", "sub:room:rewind:2")
        await wait_until(lambda: self.core.router.subscriber_count() == 1)
        await self.publish(2)
        self.assertEqual(await self.texts(side, 1), ["item 2"])
