"""The face of a connection's transport, as a type: ``Protocol.transport`` is declared
``ITransport | None``, yet every stream transport Twisted hands a protocol (tcp, unix, TLS,
an HTTP response body's proxy producer for the producer half) also is the consumer and push
producer of its connection, and can abort it. Read by mypy only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, cast

from twisted.internet.interfaces import IAddress, IProducer
from twisted.internet.protocol import BaseProtocol


class StreamTransport(Protocol):
    """ITransport with IConsumer, IPushProducer and ``abortConnection`` (ITCPTransport)."""

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: Iterable[bytes]) -> None: ...  # noqa: N802

    def loseConnection(self) -> None: ...  # noqa: N802

    def abortConnection(self) -> None: ...  # noqa: N802

    def getPeer(self) -> IAddress: ...  # noqa: N802

    def getHost(self) -> IAddress: ...  # noqa: N802

    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...  # noqa: N802

    def unregisterProducer(self) -> None: ...  # noqa: N802

    def pauseProducing(self) -> None: ...  # noqa: N802

    def resumeProducing(self) -> None: ...  # noqa: N802

    def stopProducing(self) -> None: ...  # noqa: N802


def stream_transport(protocol: BaseProtocol) -> StreamTransport:
    """``protocol``'s transport, for a caller that knows it is connected."""
    return cast(StreamTransport, protocol.transport)
