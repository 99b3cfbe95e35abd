"""POSTs one stanza to the backend (SPEC B1) and turns its answer into a BackendAnswer.

Any failure — an error status, a timeout, a refused connection, a malformed or oversized
answer — is a BackendError carrying the HTTP status when there was one, so the handler can
pick the stanza error an iq gets. The answer body is read with the GRIP proxy's bounded
reader: past ``max_body`` bytes the backend connection is closed instead of buffered.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.words.xish import domish

from fanout_tx._transport import stream_transport
from fanout_tx.grip.instruct import GripError
from fanout_tx.grip.signature import grip_sig
from fanout_tx.outbound.body import BytesProducer
from fanout_tx.outbound.origin import DEFAULT_MAX_HOLD_BODY, BodyCollector
from fanout_tx.transports.xmpp.answer import AnswerError, BackendAnswer, parse_answer

XMPP_CONTENT_TYPE = b"application/xmpp+xml"


class BackendError(Exception):
    """The backend did not give a usable answer; ``status`` is None without an HTTP answer."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class StanzaEnvelope:
    """What the backend is told besides the stanza itself."""

    kind: str
    sender: str
    to: str
    stanza_type: str | None
    meta: Mapping[str, str]


def _pass_on(result: bytes | Failure, body: Deferred[bytes]) -> None:
    """Fires ``body`` with the collector's outcome, unless it was cancelled meanwhile."""
    if body.called:
        return
    if isinstance(result, Failure):
        body.errback(result)
    else:
        body.callback(result)


def request_headers(envelope: StanzaEnvelope, sig: str | None) -> Headers:
    headers = Headers({
        b"Content-Type": [XMPP_CONTENT_TYPE],
        b"Xmpp-Kind": [envelope.kind.encode("utf-8")],
        b"Xmpp-From": [envelope.sender.encode("utf-8")],
        b"Xmpp-To": [envelope.to.encode("utf-8")],
    })
    if envelope.stanza_type:
        headers.setRawHeaders(b"Xmpp-Type", [envelope.stanza_type.encode("utf-8")])
    for key, value in envelope.meta.items():
        headers.setRawHeaders(f"Meta-{key}".encode(), [value.encode("utf-8")])
    if sig is not None:
        headers.setRawHeaders(b"Grip-Sig", [sig.encode("ascii")])
    return headers


class BackendClient:
    """One backend URL, reached through the injected agent, each call bounded by ``timeout``
    and each answer body by ``max_body`` bytes (the GRIP proxy's instruction limit)."""

    def __init__(
        self, agent: IAgent, clock: IReactorTime, url: str, timeout: float,
        sig_iss: str = "", sig_key: bytes = b"", max_body: int = DEFAULT_MAX_HOLD_BODY,
    ) -> None:
        self._agent = agent
        self._clock = clock
        self._url = url.encode("utf-8")
        self._timeout = timeout
        self._sig_iss = sig_iss
        self._sig_key = sig_key
        self._max_body = max_body

    def post(self, stanza: domish.Element, envelope: StanzaEnvelope) -> Deferred[BackendAnswer]:
        d = self._post(stanza.toXml().encode("utf-8"), envelope)
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out)
        d.addErrback(self._as_backend_error)
        return d

    @staticmethod
    def _timed_out(_result: object, timeout: float) -> Failure:
        return Failure(BackendError(None, f"backend did not answer within {timeout} s"))

    @inlineCallbacks
    def _post(self, body: bytes, envelope: StanzaEnvelope
              ) -> Generator[Deferred[Any], Any, BackendAnswer]:
        sig = None
        if self._sig_key:
            sig = grip_sig(self._sig_iss, self._sig_key, self._clock.seconds())
        response = yield self._agent.request(
            b"POST", self._url, request_headers(envelope, sig), BytesProducer(body)
        )
        try:
            answer_body = yield self._read_body(response)
        except GripError:
            raise BackendError(None, f"backend answer larger than {self._max_body} bytes; "
                                     "connection closed") from None
        if not 200 <= response.code < 300:
            raise BackendError(response.code, f"backend answered {response.code}")
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        channels = response.headers.getRawHeaders(b"grip-channel", [])
        try:
            return parse_answer(
                [c.decode("utf-8") for c in channels], content_type.decode("latin-1"), answer_body
            )
        except (AnswerError, UnicodeDecodeError) as e:
            raise BackendError(response.code, f"invalid backend answer: {e}") from None

    def _read_body(self, response: IResponse) -> Deferred[bytes]:
        """The whole body, or a GripError past ``max_body`` (the connection is closed).
        Cancelling (the call's timeout) closes the connection too, as readBody does."""
        collector = BodyCollector(self._max_body)
        response.deliverBody(collector)
        body: Deferred[bytes] = Deferred(
            lambda _d: stream_transport(collector).stopProducing())
        collector.done.addBoth(_pass_on, body)
        return body

    @staticmethod
    def _as_backend_error(failure: Failure) -> Failure:
        if failure.check(BackendError):
            return failure
        cause = failure.getErrorMessage() or failure.type.__name__
        raise BackendError(None, f"backend unreachable: {cause}")
