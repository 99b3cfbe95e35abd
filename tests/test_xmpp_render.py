"""Published items become stanzas once per item; per subscriber only ``to`` differs."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish
from zope.interface.verify import verifyObject

from fanout_tx.core.formats.xmpp import parse_fragment
from fanout_tx.core.interfaces import ISubscriber
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.grip.instruct import Channel
from fanout_tx.transports.xmpp.render import StanzaRenderer
from fanout_tx.transports.xmpp.subscribers import JidSubscriptions, XmppSubscriber

DOMAIN = "push.example"


def _parse(data: bytes) -> domish.Element:
    """The one element in ``data``, parsed as a publish is (component namespace)."""
    return parse_fragment(data)[0]


class RenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.renderer = StanzaRenderer(DOMAIN)

    def render(self, format_name: str, obj: dict, to: str = "a@x/r") -> domish.Element:
        item = parse_item({"channel": "c", "formats": {format_name: obj}})
        render = getattr(self.renderer, "render_" + format_name.split("-")[1])
        data = render(item.formats[format_name]).addressed(to.encode())
        return _parse(data)

    def test_message(self) -> None:
        message = self.render("xmpp-message", {
            "body": "a < b & c", "subject": "s", "thread": "t", "type": "headline",
            "payload": "<x xmlns='urn:x'><y/></x>", "from": "news"})
        self.assertEqual((message["type"], message["from"], message["to"]),
                         ("headline", f"news@{DOMAIN}", "a@x/r"))
        self.assertEqual((str(message.body), str(message.subject), str(message.thread)),
                         ("a < b & c", "s", "t"))
        self.assertEqual((message.x.uri, message.x.y.name), ("urn:x", "y"))

    def test_message_from_defaults_to_domain(self) -> None:
        self.assertEqual(self.render("xmpp-message", {"body": "x"})["from"], DOMAIN)

    def test_stanza_from(self) -> None:
        """``from`` is kept inside the component's domain, else replaced by the domain;
        ``to`` is always the subscriber's."""
        for given, expected in ((f"bot@{DOMAIN}/r", f"bot@{DOMAIN}/r"), (DOMAIN, DOMAIN),
                                ("evil@elsewhere", DOMAIN), (None, DOMAIN)):
            attr = f" from='{given}'" if given else ""
            stanza = self.render("xmpp-stanza", {"content": f"<presence{attr} to='x@y'/>"})
            self.assertEqual((stanza["from"], stanza["to"]), (expected, "a@x/r"))

    def test_only_to_differs(self) -> None:
        """The prepared stanza is shared; recipients differ in the escaped ``to`` only."""
        item = parse_item({"channel": "c", "formats": {"xmpp-message": {"body": "x"}}})
        prepared = self.renderer.render_message(item.formats["xmpp-message"])
        a, b = prepared.addressed(b"a@x/1"), prepared.addressed(b"b@x/&amp;")
        self.assertEqual(a.replace(b"a@x/1", b"b@x/&amp;"), b)
        self.assertEqual(_parse(b)["to"], "b@x/&")


class SubscriberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = Router(Clock())
        StanzaRenderer(DOMAIN).install(self.router)
        self.sent: list[bytes] = []
        self.subs = JidSubscriptions(self.router, self.sent.append, max_channels=2)

    def publish(self, **formats: dict) -> None:
        self.router.publish(parse_item({"channel": "news", "formats": formats}))

    def test_subscriber_provides_interface(self) -> None:
        verifyObject(ISubscriber, XmppSubscriber("a@x/r", self.sent.append, lambda s, r: None))

    def test_one_render_per_item(self) -> None:
        """Every subscriber gets the item once even when both xmpp formats are present."""
        calls = []
        renderer = StanzaRenderer(DOMAIN)
        self.router.add_renderer("xmpp-message",
                                 lambda fmt: calls.append(fmt) or renderer.render_message(fmt))
        for jid in ("a@x/1", "b@x/2", "c@x/3"):
            self.subs.apply(jid, [Channel("news")], [], {})
        self.publish(**{"xmpp-message": {"body": "hi"}, "xmpp-stanza": {"content": "<presence/>"}})
        self.assertEqual(len(calls), 1)
        self.assertEqual(sorted(_parse(s)["to"] for s in self.sent), ["a@x/1", "b@x/2", "c@x/3"])
        self.assertEqual({_parse(s).name for s in self.sent}, {"message"})

    def test_meta_and_lifetime(self) -> None:
        """Meta lives while the JID has a subscription; unsubscribe and drop end it."""
        self.subs.apply("a@x/1", [Channel("news"), Channel("sport")], [], {"user": "a"})
        self.assertEqual(self.subs.meta_of("a@x/1"), {"user": "a"})
        self.subs.apply("a@x/1", [], ["sport"], {"user": ""})
        self.assertEqual(self.subs.meta_of("a@x/1"), {})
        self.assertEqual(self.subs.channels_of("a@x/1"), frozenset({"news"}))
        self.subs.apply("a@x/1", [], ["news"], {"user": "a"})
        self.assertIsNone(self.subs.get("a@x/1"))
        self.subs.apply("b@x/1", [Channel("news")], [], {})
        self.subs.drop("b@x/1", "unavailable")
        self.assertEqual((len(self.subs), self.router.subscriber_count()), (0, 0))

    def test_subscription_cap(self) -> None:
        self.subs.apply("a@x/1", [Channel("a"), Channel("b"), Channel("c")], [], {})
        self.assertEqual(self.subs.channels_of("a@x/1"), frozenset({"a", "b"}))

    def test_skip_self_filter_and_var_subst(self) -> None:
        """Subscription filters and var-subst read the JID's set-meta values."""
        self.subs.apply("a@x/1", [Channel("news", None, ("skip-self",))], [], {"user": "ann"})
        self.subs.apply("b@x/1", [Channel("news")], [], {"user": "bob"})
        self.router.publish(parse_item({"channel": "news", "meta": {"sender": "ann"},
                                        "formats": {"xmpp-message": {
                                            "body": "hi %(user)s",
                                            "content-filters": ["var-subst"]}}}))
        [stanza] = [_parse(s) for s in self.sent]
        self.assertEqual((stanza["to"], str(stanza.body)), ("b@x/1", "hi bob"))

    def test_router_close_drops_the_jid(self) -> None:
        self.subs.apply("a@x/1", [Channel("news")], [], {})
        self.router.close_all("shutdown")
        self.assertEqual((len(self.subs), self.router.subscriber_count()), (0, 0))
