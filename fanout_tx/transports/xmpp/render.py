"""Published xmpp formats -> stanza bytes, once per item.

The stanza is serialised once with a placeholder for ``to`` and split around it, so the
per-subscriber work is one concatenation with the subscriber's (pre-escaped) JID.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish

from fanout_tx.core.formats import Format, FormatError
from fanout_tx.core.formats.xmpp import NS_COMPONENT, PUSH_STANZAS, parse_fragment, parse_stanza
from fanout_tx.core.router import FilterError, Router

# XML cannot carry NUL, so this cannot occur anywhere else in a serialised stanza.
_PLACEHOLDER = "\x00"


@dataclass(frozen=True)
class PreparedStanza:
    """A stanza serialised around its ``to`` attribute value."""

    head: bytes
    tail: bytes

    def addressed(self, to_attr: bytes) -> bytes:
        """The stanza for one recipient; ``to_attr`` comes from ``escape_attr``."""
        return self.head + to_attr + self.tail


def escape_attr(value: str) -> bytes:
    """``value`` ready to sit inside a quoted XML attribute."""
    return domish.escapeToXml(value, isattrib=1).encode("utf-8")


def prepare(stanza: domish.Element) -> PreparedStanza:
    stanza["to"] = _PLACEHOLDER
    head, tail = stanza.toXml(defaultUri=NS_COMPONENT).encode("utf-8").split(b"\x00")
    return PreparedStanza(head, tail)


class StanzaRenderer:
    """Renders ``xmpp-message`` and ``xmpp-stanza`` for the component's ``domain``."""

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def install(self, router: Router) -> None:
        router.add_renderer("xmpp-message", self.render_message)
        router.add_renderer("xmpp-stanza", self.render_stanza)

    def render(self, fmt: Format) -> PreparedStanza:
        """Either format (an item replayed from history is rendered here, per subscriber)."""
        if fmt.name == "xmpp-message":
            return self.render_message(fmt)
        return self.render_stanza(fmt)

    def render_message(self, fmt: Format) -> PreparedStanza:
        fields = fmt.fields
        message = domish.Element((NS_COMPONENT, "message"))
        message["type"] = fields["type"]
        local = fields["from"]
        message["from"] = f"{local}@{self.domain}" if local else self.domain
        if fields["subject"] is not None:
            message.addElement("subject", content=fields["subject"])
        if fmt.content is not None:
            message.addElement("body", content=fmt.content.decode("utf-8"))
        if fields["thread"] is not None:
            message.addElement("thread", content=fields["thread"])
        if fields["payload"] is not None:
            for child in parse_fragment(fields["payload"], "payload"):
                message.addChild(child)
        return prepare(message)

    def render_stanza(self, fmt: Format) -> PreparedStanza:
        try:
            # Valid at publish time; only a var-subst value can break it here.
            stanza = parse_stanza(fmt.content or b"", PUSH_STANZAS)
        except FormatError as e:
            raise FilterError(str(e)) from None
        if not self.is_ours(stanza.getAttribute("from")):
            stanza["from"] = self.domain
        return prepare(stanza)

    def is_ours(self, address: str | None) -> bool:
        """True when ``address`` is the component's domain or a JID inside it."""
        if not address:
            return False
        try:
            return JID(address).host == self.domain
        except InvalidFormat:
            return False
