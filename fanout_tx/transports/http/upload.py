"""A client's request body on its way to the origin while it is still arriving (SPEC A2).

As Pushpin does, a body of up to ``REPLAY_LIMIT`` bytes is received whole first, so it can be
sent again (to a failover target, or when a held request is re-requested); a larger one is
streamed: the origin request starts once the limit is crossed and each chunk is passed on as
it arrives. The client's reads are paused whenever the origin is not keeping up (or not yet
connected), so memory stays bounded whatever the body's size.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from fanout_tx._transport import StreamTransport

# Pushpin's MAX_ACCEPT_REQUEST_BODY: larger bodies are streamed and cannot be sent twice.
REPLAY_LIMIT = 100_000
# Bytes queued before the origin connection takes them; past this the client is paused.
QUEUE_LIMIT = 256 * 1024


class UploadTooLargeError(Exception):
    """The client sent more than the proxy's ``max_request_body`` (-> 413)."""


class UploadInterruptedError(Exception):
    """The client went away before its whole body arrived."""


@implementer(IBodyProducer)
class UploadStream:
    """The ``IBodyProducer`` an origin request reads a streamed client body from.

    ``feed``/``finish``/``fail`` come from the client side (ProxyRequest); the origin
    connection calls ``startProducing`` and pauses/resumes us, which pauses/resumes reading
    from ``client``."""

    def __init__(self, length: int | None, client: StreamTransport) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self.started = False
        self.complete = False  # the whole body has arrived
        self._client = client
        self._client_paused = False
        self.pauses = 0  # times the client was paused, for the body-rate deadline (deadlines.py)
        self._queue: list[bytes] = []
        self._queued = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._failure: Failure | None = None
        self._stopped = False

    # -- the client side ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._stopped or self._failure is not None:
            return  # the origin no longer wants it: the rest of the body is dropped
        if self._client_paused:
            # Data while paused: the HTTP channel resumed the socket for its own reasons
            # (its response writes drained). Pause again so the queue stays bounded.
            self._client.pauseProducing()
        if self._consumer is None:
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > QUEUE_LIMIT:
                self._pause_client()
            return
        self._consumer.write(data)

    def finish(self) -> None:
        """The whole body has arrived."""
        self.complete = True
        if self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def fail(self, reason: Exception) -> None:
        """The body will never be complete (client gone, or over the size limit)."""
        if self.complete or self._failure is not None:
            return
        self._failure = Failure(reason)
        self._queue.clear()
        self._resume_client()  # let the rest drain so the request can end
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(self._failure)

    # -- IBodyProducer, for the origin connection -----------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.started = True
        if self._failure is not None:
            return fail(self._failure)
        self._consumer = consumer
        queue, self._queue, self._queued = self._queue, [], 0
        for data in queue:
            consumer.write(data)
        if self.complete:
            return succeed(None)
        self._done = Deferred()
        self._resume_client()
        return self._done

    def pauseProducing(self) -> None:
        self._pause_client()

    def resumeProducing(self) -> None:
        self._resume_client()

    def stopProducing(self) -> None:
        """The origin request is over (answered early, failed or cancelled): drop the
        rest of the body, but keep reading it so the client's request can end."""
        self._stopped = True
        self._done = None  # IBodyProducer: never fire it after stopProducing
        self._queue.clear()
        self._resume_client()

    @property
    def client_paused(self) -> bool:
        """Whether the client's reads are paused because the origin is not keeping up."""
        return self._client_paused

    def _pause_client(self) -> None:
        if not self._client_paused:
            self._client_paused = True
            self.pauses += 1
            self._client.pauseProducing()

    def _resume_client(self) -> None:
        if self._client_paused:
            self._client_paused = False
            self._client.resumeProducing()
