"""The component's stanza handler: answers disco#info and ping, sends everything else that
is addressed to the domain to the backend, and applies the backend's answer.

Every iq get/set gets exactly one result or error. Error stanzas coming back (bounces of
pushes) and ``unavailable`` presence end the sender's subscriptions.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from typing_extensions import override
from wokkel.subprotocols import XMPPHandler

from fanout_tx.core.formats.xmpp import unwritable
from fanout_tx.core.router import Router
from fanout_tx.transports.xmpp.answer import BackendAnswer
from fanout_tx.transports.xmpp.backend import BackendClient, BackendError, StanzaEnvelope
from fanout_tx.transports.xmpp.bounded_stream import OVERSIZED_EVENT, Oversized
from fanout_tx.transports.xmpp.link import LinkState
from fanout_tx.transports.xmpp.render import StanzaRenderer
from fanout_tx.transports.xmpp.serial import KeyedSerializer
from fanout_tx.transports.xmpp.subscribers import JidSubscriptions

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"
FEATURES = (NS_DISCO_INFO, NS_PING)

# Stanzas one JID may have waiting for the backend before more are refused, and all JIDs'
# stanzas running or waiting together (at most max_stanza_size each).
MAX_QUEUED_PER_JID = 32
MAX_QUEUED_TOTAL = 10_000


def stanza_error_for(status: int | None) -> StanzaError:
    """The error an iq gets when the backend answered ``status`` (None: no answer)."""
    if status == 403:
        return StanzaError("forbidden")
    if status == 404:
        return StanzaError("item-not-found")
    if status is not None and 400 <= status < 500:
        return StanzaError("bad-request")
    return StanzaError("service-unavailable", type="wait")


class ComponentHandler(XMPPHandler):
    """Maps stanzas addressed to ``renderer.domain`` to backend calls and back. ``link`` is
    the component's link state, where stanzas dropped while the link is down are counted."""

    _log = Logger()

    def __init__(
        self, renderer: StanzaRenderer, backend: BackendClient, router: Router,
        max_channels: int = 20, link: LinkState | None = None,
    ) -> None:
        super().__init__()
        self._renderer = renderer
        self._backend = backend
        self.subscriptions = JidSubscriptions(router, self.send_raw, max_channels,
                                              renderer.render)
        self._serial = KeyedSerializer(MAX_QUEUED_PER_JID, MAX_QUEUED_TOTAL)
        self._ready = False
        self.link = link if link is not None else LinkState()

    @property
    def domain(self) -> str:
        return self._renderer.domain

    # -- stream ---------------------------------------------------------------------------

    @override
    def connectionInitialized(self) -> None:
        for kind in ("message", "presence", "iq"):
            self.xmlstream.addObserver(f"/{kind}", self.on_stanza)
        self.xmlstream.addObserver(OVERSIZED_EVENT, self.on_oversized)
        self._ready = True

    @override
    def connectionLost(self, reason: Failure) -> None:
        self._ready = False
        super().connectionLost(reason)

    def when_idle(self) -> Deferred[None]:
        """Fires once no backend call is running or waiting."""
        return self._serial.when_idle()

    def send_raw(self, data: bytes) -> None:
        """Write serialised stanza bytes; pushes while the link is down are dropped (and
        counted), not queued without bound."""
        if self._ready:
            self.xmlstream.send(data)
        else:
            self.link.unsent["link_down"] += 1

    def _send(self, element: domish.Element) -> None:
        if self._ready:
            self.xmlstream.send(element)
        else:
            self.link.unsent["link_down"] += 1
            self._log.warn("link down; dropped <{kind}> to {to}", kind=element.name,
                           to=element.getAttribute("to"))

    # -- incoming stanzas -------------------------------------------------------------------

    def on_stanza(self, stanza: domish.Element) -> None:
        try:
            self._dispatch(stanza)
        except Exception:
            self._log.failure("handling <{kind}> from {sender} failed", kind=stanza.name,
                              sender=stanza.getAttribute("from"))
            if _needs_answer(stanza):
                self._send(StanzaError("internal-server-error").toResponse(stanza))

    def on_oversized(self, event: Oversized) -> None:
        """A stanza over ``max_stanza_size`` (bounded_stream.py), already thrown away: the
        sender gets ``policy-violation`` (unless it sent an error), a departure still
        counts."""
        head = event.head
        kind, stanza_type = head.name, head.getAttribute("type")
        sender, to = _jid(head.getAttribute("from")), _jid(head.getAttribute("to"))
        self._log.warn("dropped <{kind}> of {size} bytes from {sender}: larger than "
                       "max_stanza_size", kind=kind, size=event.size,
                       sender=head.getAttribute("from"))
        if sender is None or to is None or unwritable(head) is not None:
            return
        leaving = _leaving(kind, stanza_type)
        if leaving:
            self._leave(sender.full(), leaving)
        if stanza_type != "error" and kind in ("message", "presence", "iq"):
            self._send(StanzaError(
                "policy-violation", "modify", "stanza too large",
            ).toResponse(head))

    def _dispatch(self, stanza: domish.Element) -> None:
        kind, stanza_type = stanza.name, stanza.getAttribute("type")
        sender_jid, to_jid = _jid(stanza.getAttribute("from")), _jid(stanza.getAttribute("to"))
        leaving = _leaving(kind, stanza_type)
        reason = unwritable(stanza)
        if reason is not None:  # checked first: every error answer below copies the stanza
            self._log.warn("dropped <{kind}>: {reason}", kind=kind, reason=reason)
            if leaving and sender_jid is not None:
                self._leave(sender_jid.full(), leaving)
            if _needs_answer(stanza):
                answer = toResponse(stanza, "error")  # without the stanza's children
                answer.addChild(StanzaError("bad-request").getElement())
                self._send(answer)
            return
        if sender_jid is None or to_jid is None:
            self._log.warn("dropped <{kind}> with a missing or invalid from/to", kind=kind)
            if _needs_answer(stanza):
                self._send(StanzaError("jid-malformed").toResponse(stanza))
            return
        sender, to = sender_jid.full(), to_jid.full()
        if to_jid.host != self.domain:
            self._log.warn("dropped <{kind}> for {to}, not in {domain}", kind=kind, to=to,
                           domain=self.domain)
            if _needs_answer(stanza):
                self._send(StanzaError("item-not-found").toResponse(stanza))
            return
        # iq results and errors are POSTed too (SPEC B1: every other stanza): they answer
        # iq requests a backend pushed to the JID; they get no answer of their own.
        if kind == "iq" and self._answer_locally(stanza, stanza_type):
            return
        envelope = StanzaEnvelope(kind, sender, to, stanza_type, {})
        if not self._serial.submit(sender, lambda: self._forward(stanza, envelope, leaving)):
            self._log.warn("{sender} has too many stanzas waiting for the backend (or all "
                           "JIDs together have)", sender=sender)
            if leaving:
                self._leave(sender, leaving)
            if _needs_answer(stanza):
                self._send(StanzaError("resource-constraint", type="wait").toResponse(stanza))

    def _leave(self, sender: str, reason: str) -> None:
        self.subscriptions.drop(sender, reason)

    def _answer_locally(self, iq: domish.Element, iq_type: str) -> bool:
        query = next(iq.elements(), None)
        if iq_type != "get" or query is None:
            return False
        if (query.uri, query.name) == (NS_DISCO_INFO, "query"):
            result = toResponse(iq, "result")
            answer = result.addElement((NS_DISCO_INFO, "query"))
            if query.getAttribute("node"):
                answer["node"] = query["node"]
            identity = answer.addElement("identity")
            identity["category"], identity["type"] = "component", "generic"
            identity["name"] = "fanout_tx push"
            for feature in FEATURES:
                answer.addElement("feature")["var"] = feature
            self._send(result)
            return True
        if (query.uri, query.name) == (NS_PING, "ping"):
            self._send(toResponse(iq, "result"))
            return True
        return False

    # -- the backend round trip -------------------------------------------------------------

    def _forward(self, stanza: domish.Element, envelope: StanzaEnvelope,
                 leaving: str | None) -> Deferred[Any]:
        """Runs in the JID's turn: earlier stanzas' answers are applied, so the meta is
        current and a departure cannot be undone by a late subscribe."""
        envelope = StanzaEnvelope(
            envelope.kind, envelope.sender, envelope.to, envelope.stanza_type,
            self.subscriptions.meta_of(envelope.sender),
        )
        if leaving:
            self._leave(envelope.sender, leaving)
        d = self._backend.post(stanza, envelope)
        d.addCallbacks(self._apply, self._backend_failed, callbackArgs=(stanza, envelope),
                       errbackArgs=(stanza, envelope))
        d.addErrback(self._apply_failed, stanza, envelope)
        return d

    def _apply(self, answer: BackendAnswer, stanza: domish.Element, envelope: StanzaEnvelope,
               ) -> None:
        leaving = _leaving(envelope.kind, envelope.stanza_type) is not None
        if leaving and (answer.subscribe or answer.set_meta):
            self._log.info("not subscribing {sender}: it sent {type}", sender=envelope.sender,
                           type=envelope.stanza_type)
        self.subscriptions.apply(
            envelope.sender,
            () if leaving else answer.subscribe,
            answer.unsubscribe,
            {} if leaving else answer.set_meta,
        )
        iq_answered = False
        for reply in answer.replies:
            if reply.name == "iq":
                if not _needs_answer(stanza) or iq_answered:
                    self._log.warn("ignored an <iq> reply for {sender} that answers no iq",
                                   sender=envelope.sender)
                    continue
                result = toResponse(stanza, "result")
                result.children = reply.children
                iq_answered = True
                self._send(result)
                continue
            reply["to"] = envelope.sender
            if not self._renderer.is_ours(reply.getAttribute("from")):
                reply["from"] = envelope.to
            self._send(reply)
        if _needs_answer(stanza) and not iq_answered:
            self._send(toResponse(stanza, "result"))

    def _backend_failed(self, failure: Failure, stanza: domish.Element,
                        envelope: StanzaEnvelope) -> None:
        failure.trap(BackendError)
        error: BackendError = failure.value
        self._log.warn(
            "backend failed for <{kind}> from {sender}: {reason}",
            kind=envelope.kind, sender=envelope.sender, reason=error.reason,
        )
        if _needs_answer(stanza):
            self._send(stanza_error_for(error.status).toResponse(stanza))

    def _apply_failed(self, failure: Failure, stanza: domish.Element,
                      envelope: StanzaEnvelope) -> None:
        self._log.failure("applying the backend answer for {sender} failed", failure,
                          sender=envelope.sender)
        if _needs_answer(stanza):
            self._send(StanzaError("internal-server-error").toResponse(stanza))


def _leaving(kind: str, stanza_type: str | None) -> str | None:
    """Why a stanza ends its sender's subscriptions, or None."""
    if stanza_type == "error":
        return f"error <{kind}> came back"
    if kind == "presence" and stanza_type == "unavailable":
        return "unavailable"
    return None


def _jid(value: str | None) -> JID | None:
    if not value:
        return None
    try:
        return JID(value)
    except InvalidFormat:
        return None


def _needs_answer(stanza: domish.Element) -> bool:
    return stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set")
