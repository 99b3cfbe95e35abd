"""Fakes around a WsOverHttpSession: the events origin and the client it talks to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred

from fanout_tx.transports.ws import events as ev
from fanout_tx.transports.ws.session import OriginReply

EVENTS = ("Content-Type", "application/websocket-events")
GRIP = ("Sec-WebSocket-Extensions", "grip")


def reply(*events: ev.Event, headers: tuple = (EVENTS, GRIP)) -> OriginReply:
    return OriginReply(200, b"OK", tuple(headers), ev.encode_events(events))


def control(obj: str) -> ev.Event:
    return ev.Event("TEXT", b"c:" + obj.encode())


class FakeEventsOrigin:
    """Holds each request's Deferred until the test answers it."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[ev.Event], dict[str, str], Deferred]] = []

    def post(self, body: bytes, meta: Mapping[str, str]) -> Deferred[OriginReply]:
        d: Deferred[OriginReply] = Deferred()
        self.requests.append((ev.decode_events(body), dict(meta), d))
        return d

    def answer(self, response: OriginReply, index: int = -1) -> None:
        self.requests[index][2].callback(response)

    def events(self, index: int = -1) -> list[ev.Event]:
        return self.requests[index][0]


class FakeWsClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.closed: tuple[int | None, str] | None = None
        self.aborted = False
        self.paused = False

    def send_message(self, payload: bytes, binary: bool) -> None:
        self.sent.append(("binary" if binary else "text", payload))

    def send_prepared(self, prepared: Any) -> None:
        self.sent.append(("prepared", prepared))

    def send_ping(self, payload: bytes) -> None:
        self.sent.append(("ping", payload))

    def send_pong(self, payload: bytes) -> None:
        self.sent.append(("pong", payload))

    def close(self, code: int | None, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True

    def follow_writes(self, producer: Any) -> None:
        """Only plain WebSocket proxying follows the client's writes."""

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
