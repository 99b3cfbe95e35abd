"""End to end against a real Prosody: real XMPP clients, the component, a real backend Site,
and publishes through the HTTP publish API and ZeroMQ."""

from __future__ import annotations

import json
from typing import Any

import zmq
from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.words.xish import domish

from fanout_tx.core.bus import LocalBus
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.inputs.publish_api import PublishRoot, PublishSite
from fanout_tx.inputs.publish_auth import BearerAuth
from fanout_tx.inputs.zmq_ingest import ZmqPullInput
from fanout_tx.transports.xmpp.backend import BytesProducer
from fanout_tx.transports.xmpp.component import XmppComponent
from fanout_tx.transports.xmpp.handler import NS_DISCO_INFO
from fanout_tx.transports.xmpp.link import LinkFactory
from tests.support.helpers import with_deadline
from tests.support.prosody import (
    DOMAIN,
    Answer,
    ProsodyTestsMixin,
    header_value,
    subscribe_and_echo,
)


class DeliveryTests(ProsodyTestsMixin, TestCase):
    """Subscribing through the backend, and publishing through the HTTP API and ZeroMQ."""

    async def test_publish_reaches_subscribers_until_one_logs_out(self) -> None:
        """Two clients message the component and are subscribed by the backend; publishes
        through the HTTP API and ZeroMQ reach both; after one logs out, only the other."""
        backend, url = self.start_backend()
        backend.answer = subscribe_and_echo
        router = Router(reactor)
        bus = LocalBus(router)
        component = await self.start_component(router, url)
        publish_port = reactor.listenTCP(0, PublishSite(
            PublishRoot(bus, router, BearerAuth(b"", "", reactor)), 1_000_000, reactor,
        ), interface="127.0.0.1")
        self.addCleanup(publish_port.stopListening)
        publish_url = f"http://127.0.0.1:{publish_port.getHost().port}/publish/".encode()
        pull = ZmqPullInput(reactor, zmq.Context.instance(), bus, "tcp://127.0.0.1:*")
        pull.startService()
        self.addCleanup(pull.stopService)

        alice, bob = await self.login("alice"), await self.login("bob")
        for client in (alice, bob):
            client.send(f"<presence to='{DOMAIN}'/>")
            client.send(f"<message to='news@{DOMAIN}' type='chat'><body>hi</body></message>")
            reply = await client.next()
            self.assertEqual(str(reply.body), "subscribed")
            self.assertEqual(reply["from"], f"news@{DOMAIN}")
        self.assertEqual(component.handler.subscriptions.meta_of(alice.jid.full()),
                         {"user": "alice"})

        agent = Agent(reactor)
        item = {"channel": "news", "formats": {"xmpp-message": {"body": "via http",
                                                                "from": "news"}}}
        response = await agent.request(b"POST", publish_url, None,
                                       BytesProducer(json.dumps({"items": [item]}).encode()))
        self.assertEqual((response.code, await readBody(response)), (200, b"Published\n"))
        for client in (alice, bob):
            message = await client.next()
            self.assertEqual((str(message.body), message["from"], message["to"]),
                             ("via http", f"news@{DOMAIN}", client.jid.full()))

        push = zmq.Context.instance().socket(zmq.PUSH)
        self.addCleanup(push.close, 0)
        push.connect(pull.endpoints[0])
        stanza = "<message type='headline'><body>via zmq</body></message>"
        push.send(b"J" + json.dumps({"channel": "news",
                                     "formats": {"xmpp-stanza": {"content": stanza}}}).encode())
        for client in (alice, bob):
            self.assertEqual(str((await client.next()).body), "via zmq")

        await bob.disconnect()
        await backend.next_request("presence", "unavailable")
        self.assertIsNone(component.handler.subscriptions.get(bob.jid.full()))
        self.assertEqual(router.subscriber_count(), 1)
        response = await agent.request(b"POST", publish_url, None, BytesProducer(json.dumps(
            {"items": [dict(item, formats={"xmpp-message": {"body": "only alice"}})]}
        ).encode()))
        await readBody(response)
        message = await alice.next()
        self.assertEqual((str(message.body), message["from"]), ("only alice", DOMAIN))
        self.assertEqual(router.deliveries["xmpp-message"], 3)

        response = await agent.request(b"POST", publish_url, None, BytesProducer(json.dumps(
            {"items": [{"channel": "news", "formats": {"xmpp-stanza": {"content": "<iq/>"}}}]}
        ).encode()))
        self.assertEqual(response.code, 400)
        self.assertIn(b"message or presence", await readBody(response))

    async def test_bounce_ends_subscription(self) -> None:
        """A client subscribed by a message alone (no directed presence) logs out; Prosody
        bounces the next push, and the bounce ends the subscription."""
        backend, url = self.start_backend()
        backend.answer = subscribe_and_echo
        router = Router(reactor)
        component = await self.start_component(router, url)
        alice = await self.login("alice")
        alice.send(f"<message to='{DOMAIN}'><body>hi</body></message>")
        await alice.next()
        jid = alice.jid.full()
        await alice.disconnect()
        router.publish(parse_item({"channel": "news",
                                   "formats": {"xmpp-message": {"body": "anyone?"}}}))
        headers = await backend.next_request("message", "error")
        self.assertEqual(header_value(headers, "xmpp-from"), jid)
        self.assertIsNone(component.handler.subscriptions.get(jid))
        self.assertEqual(router.subscriber_count(), 0)

    async def test_backend_request_headers(self) -> None:
        """The backend gets the stanza with Xmpp-* headers and a Grip-Sig."""
        backend, url = self.start_backend()
        backend.answer = subscribe_and_echo
        await self.start_component(Router(reactor), url)
        alice = await self.login("alice")
        alice.send(f"<message to='bot@{DOMAIN}' type='normal'><body>x</body></message>")
        headers, body = await backend.requests.get()
        await alice.next()  # the answer was applied: nothing is left in flight
        self.assertEqual(
            [header_value(headers, n) for n in ("content-type", "xmpp-kind", "xmpp-from",
                                           "xmpp-to", "xmpp-type")],
            ["application/xmpp+xml", "message", alice.jid.full(), f"bot@{DOMAIN}", "normal"],
        )
        self.assertTrue(header_value(headers, "grip-sig"))
        self.assertIn(b"<body>x</body>", body)


class IqTests(ProsodyTestsMixin, TestCase):
    """Every iq gets exactly one answer: local, from the backend, or a mapped error."""

    async def test_iq_answers(self) -> None:
        backend, url = self.start_backend()
        statuses = iter([200, 403, 404, 400, 503])

        def answer(headers: Headers, body: bytes) -> Answer:
            code = next(statuses)
            if code != 200:
                return code, {}, b""
            reply = "<iq><query xmlns='urn:example'><answer>42</answer></query></iq>"
            return 200, {"Content-Type": "application/grip-instruct"}, json.dumps(
                {"reply": [reply]}).encode()

        backend.answer = answer
        await self.start_component(Router(reactor), url)
        alice = await self.login("alice")

        disco = await alice.iq("get", DOMAIN, domish.Element((NS_DISCO_INFO, "query")))
        self.assertEqual(disco["type"], "result")
        features = {f["var"] for f in disco.query.elements(NS_DISCO_INFO, "feature")}
        self.assertIn("urn:xmpp:ping", features)
        ping = await alice.iq("get", f"x@{DOMAIN}", domish.Element(("urn:xmpp:ping", "ping")))
        self.assertEqual(ping["type"], "result")

        query = domish.Element(("urn:example", "query"))
        result = await alice.iq("get", f"calc@{DOMAIN}", query)
        self.assertEqual((result["type"], result["from"]), ("result", f"calc@{DOMAIN}"))
        self.assertEqual(str(result.query.answer), "42")
        for condition, error_type in (("forbidden", "auth"), ("item-not-found", "cancel"),
                                      ("bad-request", "modify"),
                                      ("service-unavailable", "wait")):
            error = await alice.iq("set", f"calc@{DOMAIN}", query)
            self.assertEqual(error["type"], "error")
            self.assertEqual((error.error["type"], next(error.error.elements()).name),
                             (error_type, condition))


class LinkTests(ProsodyTestsMixin, TestCase):
    """Refused links are reported with their cause."""

    async def test_wrong_secret_and_conflict_are_reported(self) -> None:
        """A wrong secret and a second instance for the same domain are error log lines
        naming the cause, and counted in the link state."""
        failed: DeferredQueue[dict[str, Any]] = DeferredQueue()

        def observe(event: dict[str, Any]) -> None:
            if isinstance(event.get("log_source"), LinkFactory) and event.get("reason"):
                failed.put(event)

        async def next_failure(component: XmppComponent) -> dict[str, Any]:
            while True:
                event = await with_deadline(failed.get(), "the link never logged a failure")
                if event["log_source"] is component.factory:
                    return event

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        backend, url = self.start_backend()

        wrong = await self.start_component(Router(reactor), url, secret="wrong", wait=False)
        event = await next_failure(wrong)
        self.assertEqual((event["reason"], event["log_level"].name), ("not-authorized", "error"))
        self.assertEqual((wrong.link.up, wrong.link.errors["not-authorized"]), (False, 1))
        self.assertIn("not-authorized", wrong.link.last_error)

        first = await self.start_component(Router(reactor), url)
        self.assertTrue(first.link.up)
        second = await self.start_component(Router(reactor), url, wait=False)
        self.assertEqual((await next_failure(second))["reason"], "conflict")
        self.assertEqual(second.link.errors["conflict"], 1)
        self.assertTrue(first.link.up)
