"""Test support for the webhooks tests: real HTTP receivers on 127.0.0.1, fake client and
claims, and a fanout_tx instance in a child process to kill with SIGKILL.

The receiver checks every delivery's Standard Webhooks signature with its own code (hmac,
not fanout_tx's signing module), dedupes on ``webhook-id`` as a real receiver should, and
answers as its ``behaviour`` says: 2xx, a failure, 410, a redirect, or never (hanging).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.transports.webhooks.client import IWebhookClient, Outcome
from fanout_tx.transports.webhooks.model import Delivery, Subscription
from fanout_tx.transports.webhooks.shared import Claim, ISharedStore
from fanout_tx.transports.webhooks.store import MemoryStore
from tests.support.helpers import TrackingFactory, with_deadline

HANG = -1  # a behaviour answer: never respond


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    status: int = 0


def check_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (docs/webhooks.rst), written independently of fanout_tx."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ")
               if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, o) for o in offered)


Behaviour = Callable[[int], tuple[int, dict[str, str]]]


def always(status: int, **headers: str) -> Behaviour:
    return lambda _n: (status, headers)


def fail_first(failures: int, status: int = 500, **headers: str) -> Behaviour:
    return lambda n: (status, headers) if n < failures else (204, {})


class Receiver(Resource):
    """A webhook endpoint: answers challenges, verifies, dedupes, answers per behaviour."""

    isLeaf = True

    def __init__(self, behaviour: Behaviour | None = None,
                 answer_challenges: bool = True) -> None:
        super().__init__()
        self.behaviour = behaviour or always(204)
        self.answer_challenges = answer_challenges
        self.challenges = 0
        self.secret = ""
        self.requests: list[Received] = []
        self.unique: dict[str, Received] = {}
        self.hanging: list[IRequest] = []
        self._held: list[tuple[IRequest, Received]] = []
        self._waiters: list[tuple[str, int, Deferred[None]]] = []
        self.url = ""
        self.factory: TrackingFactory | None = None

    @override
    def render(self, request: IRequest) -> bytes | int:
        challenge = request.args.get(b"webhook.challenge")
        if challenge:
            self.challenges += 1
            if self.answer_challenges:
                return challenge[0] + b"\n"
            status, _headers = self.behaviour(0)
            if status == HANG:
                self.hanging.append(request)
                return NOT_DONE_YET
            request.setResponseCode(status)
            return b"not the challenge"
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read()
        ok = bool(self.secret) and check_signature(self.secret, headers, body)
        received = Received(request.method.decode(), request.uri.decode(), headers, body, ok)
        status, answer_headers = self.behaviour(len(self.requests))
        received.status = status
        self.requests.append(received)
        if 200 <= status < 300:
            self.unique.setdefault(headers["webhook-id"], received)
        if status == HANG:
            self.hanging.append(request)
            self._held.append((request, received))
        self._wake()  # may resume a waiting test at once: the bookkeeping is done
        if status == HANG:
            return NOT_DONE_YET
        request.setResponseCode(status)
        for name, value in answer_headers.items():
            request.setHeader(name, value)
        return b""

    def answer_held(self, status: int = 204) -> int:
        """Answer the held (HANG) deliveries whose client is still connected, as a slow
        endpoint finally does; returns how many were answered."""
        answered = 0
        for request, received in self._held:
            if request.channel is None:  # the client gave up (connection lost)
                continue
            request.setResponseCode(status)
            request.finish()
            received.status = status
            answered += 1
            if 200 <= status < 300:
                self.unique.setdefault(received.headers["webhook-id"], received)
        self._held.clear()
        self._wake()
        return answered

    def _wake(self) -> None:
        for entry in list(self._waiters):
            attribute, count, waiter = entry
            if len(getattr(self, attribute)) >= count:
                self._waiters.remove(entry)
                waiter.callback(None)

    def wait_for(self, count: int, attribute: str = "unique",
                 seconds: float = 100.0) -> Deferred[None]:
        """Fires once ``count`` distinct webhook-ids were answered 2xx (or, with
        ``attribute="requests"``, once ``count`` requests of any outcome arrived); fails
        after ``seconds`` (19,000 deliveries take 50 s on a loaded machine), before trial's
        own 120 s timeout."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append((attribute, count, waiter))
        self._wake()
        return with_deadline(waiter, f"the receiver did not get {count} {attribute}", seconds)

    async def listen(self, tls: str = "") -> str:
        """Listen on 127.0.0.1 port 0; ``tls`` = "privateKey=...:certKey=..." for https."""
        self.factory = TrackingFactory(Site(self))
        description = f"ssl:0:interface=127.0.0.1:{tls}" if tls else "tcp:0:interface=127.0.0.1"
        port = await serverFromString(reactor, description).listen(self.factory)
        self._port = port
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{port.getHost().port}/hook"
        return self.url

    async def close(self) -> None:
        """Stop listening and drop every connection, hanging ones included."""
        await maybeDeferred(self._port.stopListening)  # None when already stopped
        assert self.factory is not None
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        await self.factory.wait_closed()


@dataclass
class Sent:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    result: Deferred[Outcome] = field(default_factory=Deferred)

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name)


@implementer(IWebhookClient)
class FakeWebhookClient:
    """Records each request; the test answers it by firing ``sent[i].result``."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def request(self, method: str, url: str, headers: Any, body: bytes) -> Deferred[Outcome]:
        self.sent.append(Sent(method, url, list(headers), body))
        return self.sent[-1].result


@implementer(ISharedStore)
class FakeClaims:
    """Records each claim; the test answers it by firing ``asked[i][1]``."""

    def __init__(self) -> None:
        self.asked: list[tuple[Delivery, Deferred[Claim]]] = []
        self.released: list[str] = []

    def claim(self, delivery: Delivery) -> Deferred[Claim]:
        self.asked.append((delivery, Deferred()))
        return self.asked[-1][1]

    def release(self, delivery: Delivery) -> Deferred[None]:
        self.released.append(delivery.webhook_id)
        return succeed(None)

    def subscriptions(self) -> Deferred[list[Subscription]]:
        return succeed([])

    def pending(self, subscription_id: str) -> Deferred[list[Delivery]]:
        return succeed([])


class NotifyingStore(MemoryStore):
    """A MemoryStore that tells the test when a given write happened."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: dict[str, list[Deferred[None]]] = {}

    def wait(self, method: str) -> Deferred[None]:
        """Fires at the next call of ``method``; fails after 30 s."""
        waiter: Deferred[None] = Deferred()
        self._waiters.setdefault(method, []).append(waiter)
        return with_deadline(waiter, f"the store's {method} was not called", 30.0)

    def _notify(self, method: str) -> None:
        for waiter in self._waiters.pop(method, []):
            waiter.callback(None)

    @override
    def bury(self, delivery: Delivery) -> Deferred[None]:
        result = super().bury(delivery)
        self._notify("bury")
        return result

    @override
    def delete_subscription(self, subscription_id: str) -> Deferred[None]:
        result = super().delete_subscription(subscription_id)
        self._notify("delete_subscription")
        return result


# A webhooks instance in its own process, to be killed with SIGKILL. Arguments: Redis URL,
# receiver URL, key prefix, claim lease. It registers a subscription, prints its secret,
# publishes one item (its first attempt immediate, the retry 2 s later) and runs until
# killed.
CHILD = """
import ipaddress, sys
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from fanout_tx.config.settings import RedisConfig, WebhooksConfig
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.webhooks.model import NewSubscription
from fanout_tx.transports.webhooks.redis_store import RedisStore, connect
from fanout_tx.transports.webhooks.service import build_webhooks

async def main():
    url, target, prefix, lease = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    config = WebhooksConfig(allow_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
                            verify=False, timeout=30.0, retry_schedule=(0, 2.0, 2.0))
    router = Router(reactor)
    store = RedisStore(lambda: connect(url), prefix, lease=lease)
    service = build_webhooks(config, RedisConfig(url=url, prefix=prefix), router, reactor,
                             origin_clients(reactor).vetted, store=store)
    service.startService()
    await service.loaded
    sub = await service.register(NewSubscription(target, ("c",), None, (), False))
    print("SECRET", sub.secret, flush=True)
    router.publish(parse_item({"channel": "c", "id": "1",
                               "formats": {"http-request": {"body": "one"}}}))

ensureDeferred(main())
reactor.run()
"""


class ChildInstance(ProcessProtocol):
    """The CHILD process: ``secret`` fires with its subscription's secret, ``ended`` when it
    exits; ``kill()`` sends SIGKILL."""

    def __init__(self, redis_url: str, receiver_url: str, prefix: str, lease: float) -> None:
        self.output = b""
        self.secret: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()
        args = [sys.executable, "-c", CHILD, redis_url, receiver_url, prefix, str(lease)]
        self._process = reactor.spawnProcess(self, sys.executable, args, env=os.environ.copy())

    def kill(self) -> Deferred[None]:
        self._process.signalProcess("KILL")
        return self.ended

    @override
    def outReceived(self, data: bytes) -> None:
        self.output += data
        *complete, _partial = self.output.split(b"\n")  # a line may arrive in pieces
        for line in complete:
            if line.startswith(b"SECRET ") and not self.secret.called:
                self.secret.callback(line.split()[1].decode())

    @override
    def processEnded(self, reason: Failure) -> None:
        if not self.secret.called:
            self.secret.errback(AssertionError(f"child ended: {self.output!r}"))
        self.ended.callback(None)
