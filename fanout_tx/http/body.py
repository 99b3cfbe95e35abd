"""A request body already in memory, for Agent requests to origins, backends and webhooks."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from typing_extensions import override
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesProducer:
    """Writes the whole body at once. Unlike FileBodyProducer it needs no cooperator, so it
    never reaches for the global reactor."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    @override
    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    @override
    def pauseProducing(self) -> None:
        """Nothing to pause: the body was written in one go."""

    @override
    def resumeProducing(self) -> None:
        """Nothing to resume."""

    @override
    def stopProducing(self) -> None:
        """Nothing to stop."""
