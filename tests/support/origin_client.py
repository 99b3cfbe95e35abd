"""In-memory endpoints and readers for outbound/origin_client.py's tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from typing_extensions import override
from zope.interface import implementer


class MemoryEndpoint:
    """Connects at once, to a StringTransport."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


@implementer(IAgentEndpointFactory)
class MemoryEndpoints:
    def __init__(self) -> None:
        self.endpoint = MemoryEndpoint()

    def endpointForURI(self, uri: Any) -> MemoryEndpoint:  # noqa: N802
        return self.endpoint


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


class Reader(Protocol):
    """A body reader: the chunks, and how the body ended (``reason`` once ``ended`` fired)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    @override
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.ended.callback(None)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)
