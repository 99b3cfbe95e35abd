"""The xmpp-message and xmpp-stanza publish formats are validated at publish time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.codecs.tnetstring import dumps
from fanout_tx.core.formats import FormatError
from fanout_tx.core.formats.xmpp import (
    MAX_STANZA_BYTES,
    NS_COMPONENT,
    parse_fragment,
    parse_xmpp_message,
    parse_xmpp_stanza,
)
from fanout_tx.core.items import PublishError, decode_message, parse_item, parse_items_json


class XmppMessageTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """Body is the content (so var-subst applies); the rest is typed fields."""
        fmt = parse_xmpp_message({"body": "hi", "subject": "s", "thread": "t", "type": "headline",
                                  "payload": "<x xmlns='urn:x'/>", "from": "News"})
        self.assertEqual(fmt.content, b"hi")
        self.assertEqual(dict(fmt.fields), {"type": "headline", "subject": "s", "thread": "t",
                                            "payload": "<x xmlns='urn:x'/>", "from": "news"})

    def test_defaults(self) -> None:
        fmt = parse_xmpp_message({})
        self.assertEqual((fmt.content, fmt.fields["type"], fmt.fields["from"]),
                         (None, "chat", None))

    def test_invalid(self) -> None:
        """Each bad field is named in the error."""
        for obj, words in (
            ({"type": "groupchat"}, "type"),
            ({"from": "a@b"}, "from"),
            ({"from": ""}, "from"),
            ({"payload": "<x>"}, "payload"),
            ({"payload": "text"}, "payload"),
            ({"body": "bell \x07"}, "body"),
            ({"body": 5}, "body"),
            ({"body": "x" * (MAX_STANZA_BYTES + 1)}, "larger"),
        ):
            with self.assertRaises(FormatError) as caught:
                parse_xmpp_message(obj)
            self.assertIn(words, str(caught.exception))


class XmppStanzaTests(SynchronousTestCase):
    def test_message_and_presence(self) -> None:
        for content in ("<message><body>x</body></message>", "<presence type='unavailable'/>",
                        "<message xmlns='jabber:client'/>"):
            self.assertEqual(parse_xmpp_stanza({"content": content}).content, content.encode())

    def test_rejected(self) -> None:
        """Malformed XML, other stanzas, several elements, DTDs and oversized content fail
        with a reason."""
        for content, words in (
            ("<message>", "well-formed"),
            ("<iq type='get'/>", "message or presence"),
            ("<foo:message xmlns:foo='urn:other'/>", "message or presence"),
            ("<message/><message/>", "exactly one"),
            ("hello <message/>", "text outside"),
            ("<!DOCTYPE m [<!ENTITY e 'x'>]><message>&e;</message>", "well-formed"),
            ("<?xml-stylesheet href='x'?><message/>", "processing instructions"),
            ("<message/></fragment><fragment>", "well-formed"),
            # what domish would write unescaped or too deep: the server would drop the link
            ("<message xmlns:a='x&amp;y'><body>b</body></message>", "cannot write"),
            ("<message>" + "<a>" * 70 + "</a>" * 70 + "</message>", "nested deeper than 64"),
            ("<message><body>" + "x" * MAX_STANZA_BYTES + "</body></message>", "larger"),
            ("", "exactly one"),
        ):
            with self.assertRaises(FormatError) as caught:
                parse_xmpp_stanza({"content": content})
            self.assertIn(words, str(caught.exception))
        with self.assertRaises(FormatError):
            parse_xmpp_stanza({})

    def test_client_namespace_is_mapped(self) -> None:
        """Stanzas in jabber:client are sent in the component stream's namespace."""
        [element] = parse_fragment("<message xmlns='jabber:client'><body>x</body></message>")
        self.assertEqual((element.uri, element.body.uri), (NS_COMPONENT, NS_COMPONENT))

    @given(st.one_of(st.text(max_size=100), st.lists(st.sampled_from(
        ["<message>", "</message>", "<presence/>", "<body>", "</body>", "&amp;", "&x;", "<",
         "'", " type='chat'", "<!--c-->", "<?p?>", "x", "\u00e9"]), max_size=12).map("".join)))
    def test_arbitrary_text_is_valid_or_format_error(self, text: str) -> None:
        """Whatever the publisher sends, the parser answers a value or a FormatError."""
        try:
            fmt = parse_xmpp_stanza({"content": text})
        except FormatError:
            return
        self.assertEqual(fmt.content, text.encode("utf-8"))


class PublishPathTests(SynchronousTestCase):
    def test_registered_formats(self) -> None:
        """Both formats go through item parsing; a bad stanza is an Invalid format error."""
        item = parse_item({"channel": "c", "formats": {
            "xmpp-message": {"body": "a"}, "xmpp-stanza": {"content": "<presence/>"}}})
        self.assertEqual(set(item.formats), {"xmpp-message", "xmpp-stanza"})
        with self.assertRaises(PublishError) as caught:
            parse_items_json(b'{"items": [{"channel": "c", "formats": '
                             b'{"xmpp-stanza": {"content": "<message"}}}]}')
        self.assertIn("Invalid format: xmpp-stanza", str(caught.exception))

    def test_tnetstring_bytes(self) -> None:
        """ZeroMQ tnetstring publishes carry content and body as bytes."""
        raw = dumps({b"channel": b"c", b"formats": {
            b"xmpp-stanza": {b"content": b"<message/>"},
            b"xmpp-message": {b"body": "caf\u00e9".encode()},
        }})
        item = parse_item(decode_message(raw))
        self.assertEqual(item.formats["xmpp-message"].content, "caf\u00e9".encode())
        self.assertEqual(item.formats["xmpp-stanza"].content, b"<message/>")
