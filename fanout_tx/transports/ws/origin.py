"""The HTTP side of WebSocket-over-HTTP: POST one websocket-events body to the origin.

Each request carries the handshake's headers (already filtered by the handler), a fresh
``Grip-Sig``, ``Connection-Id`` and ``Meta-*``. Several targets mean failover on connect
errors, as for plain HTTP routes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from fanout_tx.outbound.body import BytesProducer
from fanout_tx.outbound.origin import BodyCollector, header_pairs
from fanout_tx.transports.ws.session import EVENTS_TYPE, OriginError, OriginReply

# As Pushpin: an origin reply body may be at most 1 MB.
MAX_REPLY_BODY = 1_000_000

_CONNECT_ERRORS = (net_error.ConnectError, net_error.DNSLookupError)
# Client-sent values of these are never forwarded: the session sets its own.
_OWN_HEADERS = frozenset({
    b"content-type", b"accept", b"connection-id", b"sec-websocket-extensions",
})


class HttpOrigin:
    """Posts websocket-events to the route's targets (``targets``: each URL with the client
    that reaches it, verified or ``insecure``), failing over on connect errors.
    ``base_headers(now)`` gives the proxy's origin headers (forwarding rules, a Grip-Sig
    signed at ``now``), so every request is signed afresh."""

    def __init__(
        self, clock: IReactorTime, targets: Sequence[tuple[bytes, IAgent]],
        base_headers: Callable[[float], Headers], connection_id: str,
    ) -> None:
        self._clock = clock
        self._targets = list(targets)
        self._base_headers = base_headers
        self._connection_id = connection_id.encode("ascii")

    def _request_headers(self, meta: Mapping[str, str]) -> Headers:
        headers = Headers()
        for name, values in self._base_headers(self._clock.seconds()).getAllRawHeaders():
            lowered = name.lower()
            if lowered not in _OWN_HEADERS and not lowered.startswith(b"meta-"):
                headers.setRawHeaders(name, values)
        events_type = [EVENTS_TYPE.encode("ascii")]
        headers.setRawHeaders(b"Content-Type", events_type)
        headers.setRawHeaders(b"Accept", events_type)
        headers.setRawHeaders(b"Connection-Id", [self._connection_id])
        headers.setRawHeaders(b"Sec-WebSocket-Extensions", [b"grip"])
        for key, value in meta.items():
            headers.addRawHeader(b"Meta-" + key.encode("latin-1"), value.encode("utf-8"))
        return headers

    @inlineCallbacks
    def post(self, body: bytes, meta: Mapping[str, str]
             ) -> Generator[Deferred[Any], Any, OriginReply]:
        headers = self._request_headers(meta)
        while True:
            url, agent = self._targets[0]
            try:
                response = yield agent.request(b"POST", url, headers, BytesProducer(body))
                break
            except _CONNECT_ERRORS as e:
                if len(self._targets) == 1:
                    raise OriginError(f"cannot connect to the origin: {e}") from None
                self._targets.pop(0)
            except Exception as e:  # reset, invalid answer: the origin is unusable
                raise OriginError(f"origin request failed: {e}") from None
        collector = BodyCollector(MAX_REPLY_BODY)
        response.deliverBody(collector)
        try:
            content = yield collector.done
        except Exception as e:
            raise OriginError(f"reading the origin's reply failed: {e}") from None
        return OriginReply(response.code, response.phrase,
                           tuple(header_pairs(response.headers)), content)
