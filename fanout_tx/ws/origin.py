"""The HTTP side of WebSocket-over-HTTP: POST one websocket-events body to the origin.

Each request carries the handshake's headers (already filtered by the handler), a fresh
``Grip-Sig``, ``Connection-Id`` and ``Meta-*``. Several targets mean failover on connect
errors, as for plain HTTP routes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from fanout_tx.ws.session import EVENTS_TYPE, OriginError, OriginReply

# As Pushpin: an origin reply body may be at most 1 MB.
MAX_REPLY_BODY = 1_000_000

_CONNECT_ERRORS = (net_error.ConnectError, net_error.DNSLookupError)


class _BodyCollector(Protocol):
    """Reads a response body up to ``limit`` bytes; past it the transfer is stopped."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Protocol hook
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finished.errback(OriginError(f"origin reply body over {self._limit} bytes"))
            self.transport.stopProducing()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802 - Protocol hook
        if self._finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(OriginError(f"origin reply cut short: {reason.value}"))


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one go (no cooperator, no reactor)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body) if body is not None else UNKNOWN_LENGTH

    def startProducing(self, consumer) -> Deferred[None]:  # noqa: N802 - IBodyProducer
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802 - IBodyProducer
        pass

    def resumeProducing(self) -> None:  # noqa: N802 - IBodyProducer
        pass

    def stopProducing(self) -> None:  # noqa: N802 - IBodyProducer
        pass


def read_limited(response: IResponse, limit: int) -> Deferred[bytes]:
    finished: Deferred[bytes] = Deferred()
    response.deliverBody(_BodyCollector(finished, limit))
    return finished


class HttpOrigin:
    """Posts websocket-events to the route's targets (``urls``), failing over on connect
    errors. ``sign`` returns a fresh Grip-Sig value (or None) for each request."""

    def __init__(
        self, agent: IAgent, clock: IReactorTime, urls: Sequence[bytes],
        headers: Sequence[tuple[bytes, bytes]], connection_id: str,
        sign: Callable[[float], str | None],
    ) -> None:
        self._agent = agent
        self._clock = clock
        self._urls = list(urls)
        self._headers = list(headers)
        self._connection_id = connection_id
        self._sign = sign

    def _request_headers(self, meta: Mapping[str, str]) -> Headers:
        headers = Headers()
        for name, value in self._headers:
            headers.addRawHeader(name, value)
        headers.setRawHeaders(b"Content-Type", [EVENTS_TYPE.encode()])
        headers.setRawHeaders(b"Accept", [EVENTS_TYPE.encode()])
        headers.setRawHeaders(b"Connection-Id", [self._connection_id.encode()])
        for name, value in meta.items():
            headers.addRawHeader(b"Meta-" + name.encode("latin-1"), value.encode("utf-8"))
        signature = self._sign(self._clock.seconds())
        if signature:
            headers.setRawHeaders(b"Grip-Sig", [signature.encode("ascii")])
        return headers

    @inlineCallbacks
    def post(self, body: bytes, meta: Mapping[str, str]):  # -> Deferred[OriginReply]
        headers = self._request_headers(meta)
        while True:
            url = self._urls[0]
            try:
                response = yield self._agent.request(
                    b"POST", url, headers, BytesProducer(body)
                )
                break
            except _CONNECT_ERRORS as e:
                if len(self._urls) == 1:
                    raise OriginError(f"cannot connect to the origin: {e}") from None
                self._urls.pop(0)
            except Exception as e:  # reset, invalid answer: the origin is unusable
                raise OriginError(f"origin request failed: {e}") from None
        content = yield read_limited(response, MAX_REPLY_BODY)
        return OriginReply(
            response.code,
            response.phrase,
            tuple(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, values in response.headers.getAllRawHeaders()
                for value in values
            ),
            content,
        )


