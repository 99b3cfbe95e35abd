"""Parsers for the ``xmpp-message`` and ``xmpp-stanza`` publish formats (SPEC B1).

Validation happens here, at publish time, so a bad stanza is a 400 for its publisher and
never reaches the XMPP link. ``parse_fragment`` is also what the XMPP renderer and the
backend-reply parser use, so what passes here is exactly what gets sent.
"""

from __future__ import annotations

import pyexpat
import re
from collections.abc import Mapping
from typing import Any

from twisted.words.protocols.jabber.jid import InvalidFormat
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep
from twisted.words.xish import domish

from fanout_tx._twisted import add_cdata
from fanout_tx.core.formats.base import Format, FormatError, choice, content_filters, optional_str

# Stanzas on a component stream (XEP-0114) live in this namespace; ``jabber:client`` is
# accepted from publishers and backends and mapped onto it.
NS_COMPONENT = "jabber:component:accept"
NS_CLIENT = "jabber:client"

MAX_STANZA_BYTES = 65_536
PUSH_STANZAS = ("message", "presence")
MESSAGE_TYPES = ("chat", "normal", "headline")

# Characters XML 1.0 forbids; one of them in a stanza would make the server drop the link.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# domish writes namespace URIs into xmlns='...' without escaping them: one of these in a URI
# makes the XML it sends not well-formed, and the XMPP server drops the component link.
_UNWRITABLE_IN_URI = re.compile("[&<>'\"]")
# Deeper than any real stanza; domish writes elements recursively.
MAX_DEPTH = 64


def unwritable(element: domish.Element, depth: int = 1) -> str | None:
    """Why domish cannot safely write ``element`` (a namespace URI it would not escape, or
    nesting past MAX_DEPTH), or None."""
    if depth > MAX_DEPTH:
        return f"elements nested deeper than {MAX_DEPTH}"
    uris = [element.uri, element.defaultUri, *element.localPrefixes.values()]
    uris += [name[0] for name in element.attributes if isinstance(name, tuple)]
    for uri in uris:
        if uri and _UNWRITABLE_IN_URI.search(uri):
            return f"namespace {uri!r} holds a character this server cannot write"
    for child in element.elements():
        reason = unwritable(child, depth + 1)
        if reason is not None:
            return reason
    return None


def _as_bytes(value: str | bytes, what: str) -> bytes:
    data = value if isinstance(value, bytes) else value.encode("utf-8")
    if len(data) > MAX_STANZA_BYTES:
        raise FormatError(f"{what} is larger than {MAX_STANZA_BYTES} bytes")
    return data


def xml_text(value: str | None, what: str) -> str | None:
    """``value`` unchanged, or FormatError when it holds a character XML cannot carry."""
    if value is not None and _NOT_XML_CHAR.search(value):
        raise FormatError(f"{what} holds a character that XML does not allow")
    return value


def _to_component_ns(element: domish.Element) -> None:
    if element.uri == NS_CLIENT:
        element.uri = NS_COMPONENT
    if element.defaultUri == NS_CLIENT:
        element.defaultUri = NS_COMPONENT
    for child in element.elements():
        _to_component_ns(child)


def parse_fragment(data: str | bytes, what: str = "content") -> list[domish.Element]:
    """Well-formed XML elements (no processing instruction, no loose text), with
    unqualified and ``jabber:client`` elements put in the component namespace. The content
    is parsed inside a wrapper element, so a DTD is never well-formed here."""
    raw = _as_bytes(data, what)
    stream = domish.elementStream()
    elements: list[domish.Element] = []
    stream.DocumentStartEvent = lambda _root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    parser = stream.parser

    def refuse(*_args: Any) -> None:
        raise FormatError(f"{what}: processing instructions are not allowed in XMPP")

    def cdata(text: str) -> None:
        if stream.currElem is None and text.strip():
            raise FormatError(f"{what}: text outside of an element")
        add_cdata(stream, text)

    parser.ProcessingInstructionHandler = refuse
    parser.CharacterDataHandler = cdata
    try:
        # Straight to expat: domish's own wrapper would hide our FormatError in a ParserError.
        parser.Parse(b"<fragment xmlns='" + NS_COMPONENT.encode() + b"'>", False)
        parser.Parse(raw, False)
        parser.Parse(b"</fragment>", True)
    except pyexpat.ExpatError as e:
        raise FormatError(f"{what} is not well-formed XML: {pyexpat.ErrorString(e.code)}") from None
    for element in elements:
        reason = unwritable(element)
        if reason is not None:
            raise FormatError(f"{what}: {reason}")
        _to_component_ns(element)
    return elements


def parse_stanza(
    data: str | bytes, allowed: tuple[str, ...], what: str = "content"
) -> domish.Element:
    """Exactly one stanza element whose name is in ``allowed``."""
    elements = parse_fragment(data, what)
    if len(elements) != 1:
        raise FormatError(f"{what} must be exactly one stanza, got {len(elements)} elements")
    stanza = elements[0]
    if stanza.uri != NS_COMPONENT or stanza.name not in allowed:
        raise FormatError(f"{what} must be a {' or '.join(allowed)} stanza, got <{stanza.name}>")
    return stanza


def _localpart(obj: Mapping[str, Any]) -> str | None:
    value = optional_str(obj, "from")
    if value is None:
        return None
    try:
        prepared = nodeprep.prepare(value)
    except (UnicodeError, InvalidFormat):
        raise FormatError(f"from is not a valid JID localpart: {value!r}") from None
    if not prepared or len(prepared.encode("utf-8")) > 1023:
        raise FormatError(f"from is not a valid JID localpart: {value!r}")
    return prepared


def parse_xmpp_message(obj: Mapping[str, Any]) -> Format:
    """``{body?, subject?, thread?, type?, payload?, from?}``; ``body`` is the content, so
    content filters (var-subst) apply to it."""
    raw_body = obj.get("body")
    if isinstance(raw_body, bytes):  # tnetstring input keeps body as bytes
        try:
            raw_body = raw_body.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("body must be UTF-8") from None
    body = xml_text(optional_str({"body": raw_body}, "body"), "body")
    payload = optional_str(obj, "payload")
    if payload is not None:
        parse_fragment(payload, "payload")
    fields = {
        "type": choice(obj, "type", MESSAGE_TYPES),
        "subject": xml_text(optional_str(obj, "subject"), "subject"),
        "thread": xml_text(optional_str(obj, "thread"), "thread"),
        "payload": payload,
        "from": _localpart(obj),
    }
    content = _as_bytes(body, "body") if body is not None else None
    return Format("xmpp-message", "send", content, fields, content_filters(obj))


def parse_xmpp_stanza(obj: Mapping[str, Any]) -> Format:
    """``{content: "<message .../>"}``: one message or presence stanza."""
    content = obj.get("content")
    if not isinstance(content, (str, bytes)):
        raise FormatError("content must be a string holding a message or presence stanza")
    data = _as_bytes(content, "content")
    parse_stanza(data, PUSH_STANZAS)
    return Format("xmpp-stanza", "send", data, {}, content_filters(obj))
