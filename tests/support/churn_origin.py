"""A GRIP origin in a process of its own, for tests that count the proxy's garbage: whatever
the origin allocates is then not in the process being measured.

    python -m tests.support.churn_origin   prints "HTTP_PORT WS_PORT" once both listen on 127.0.0.1

HTTP (twisted.web), by path prefix:
  /stream/CH   ``Grip-Hold: stream`` on channel CH, body ``ok``
  /poll/CH     ``Grip-Hold: response`` on channel CH, ``Grip-Timeout: 5``, body ``timeout``
  /plain       a plain 200 ``hello``
  /events      application/websocket-events: OPEN accepted with the grip extension and a
               subscription to ``wschurn``, TEXT echoed ``m:``-prefixed,
               CLOSE answered with CLOSE, anything else empty
WebSocket (autobahn): accepts with the grip extension and echoes ``m:``-prefixed.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from typing_extensions import override

EVENTS = "application/websocket-events"
SUBSCRIBE = b'c:{"type": "subscribe", "channel": "wschurn"}'


def _event(name: bytes, content: bytes = b"") -> bytes:
    return name + (b" %x\r\n%b\r\n" % (len(content), content) if content else b"\r\n")


class Origin(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        path = request.path
        channel = path.rsplit(b"/", 1)[-1]
        if path.startswith(b"/stream/"):
            request.setHeader("Grip-Hold", "stream")
            request.setHeader("Grip-Channel", channel)
            return b"ok\n"
        if path.startswith(b"/poll/"):
            request.setHeader("Grip-Hold", "response")
            request.setHeader("Grip-Channel", channel)
            request.setHeader("Grip-Timeout", "5")
            return b"timeout\n"
        if path.startswith(b"/events"):
            body = request.content.read()
            request.setHeader("Content-Type", EVENTS)
            if body.startswith(b"OPEN"):
                request.setHeader("Sec-WebSocket-Extensions", "grip")
                return _event(b"OPEN") + _event(b"TEXT", SUBSCRIBE)
            if body.startswith(b"TEXT "):
                content = body.split(b"\r\n", 2)[1]
                return _event(b"TEXT", b"m:" + content)
            if b"CLOSE" in body:
                return _event(b"CLOSE")
            return b""
        return b"hello\n"


class EchoOrigin(WebSocketServerProtocol):
    def onConnect(self, request: ConnectionRequest) -> Any:  # noqa: N802
        return None, {"Sec-WebSocket-Extensions": "grip"}

    def onOpen(self) -> None:  # noqa: N802
        self.sendMessage(SUBSCRIBE)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.sendMessage(b"m:" + payload, isBinary)


def main() -> None:
    http = reactor.listenTCP(0, Site(Origin()), backlog=1024, interface="127.0.0.1")
    factory = WebSocketServerFactory()
    factory.protocol = EchoOrigin
    ws = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    print(http.getHost().port, ws.getHost().port, flush=True)
    StandardIO(_EndWithStdin())  # ends with the test, which closes our stdin
    reactor.run()


class _EndWithStdin(Protocol):
    @override
    def connectionLost(self, reason: object = None) -> None:
        reactor.stop()


if __name__ == "__main__":
    main()
