"""``/webhooks/subscriptions``: the subscription API, mounted on the publish port (SPEC B2).

JSON in and out; every error is ``{"error": reason}`` with a 4xx status. Authentication is
the publish port's (PublishRoot checks it before this resource is reached).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from fanout_tx.transports.webhooks.model import RequestError, parse_new_subscription
from fanout_tx.transports.webhooks.service import (
    RegistrationError,
    SubscriptionLimitError,
    WebhookService,
)

MAX_REQUEST_BODY = 64 * 1024

Answer = tuple[int, Any]


def _write_json(request: Request, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    if document is None:
        return b""
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode("utf-8") + b"\n"


class WebhooksResource(Resource):
    """Routes on the path itself: ``subscriptions``, ``subscriptions/{id}``, ``.../failed``."""

    isLeaf = True
    _log = Logger()

    def __init__(self, service: WebhookService) -> None:
        super().__init__()
        self._service = service

    @override
    def render(self, request: Request) -> bytes | int:
        segments = [s.decode("utf-8", "replace") for s in request.postpath or ()]
        if segments and segments[-1] == "":
            segments.pop()
        method = request.method.decode("ascii", "replace")
        if not segments or segments[0] != "subscriptions" or len(segments) > 3:
            return _write_json(request, 404, {"error": "not found"})
        if len(segments) == 3 and segments[2] != "failed":
            return _write_json(request, 404, {"error": "not found"})
        allowed = {1: ("GET", "POST"), 2: ("GET", "DELETE"), 3: ("GET",)}[len(segments)]
        if method not in allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return _write_json(request, 405, {"error": f"method {method} not allowed"})
        handlers: dict[tuple[int, str], Callable[..., Coroutine[Any, Any, Answer]]] = {
            (1, "GET"): self._list, (1, "POST"): self._create, (2, "GET"): self._get,
            (2, "DELETE"): self._delete, (3, "GET"): self._failed,
        }
        handler = handlers[(len(segments), method)]
        return self._answer(request, handler(request, *segments[1:2]))

    def _answer(self, request: Request, work: Coroutine[Any, Any, Answer]) -> int:
        lost: list[Failure] = []
        request.notifyFinish().addErrback(lost.append)

        def done(answer: Answer) -> None:
            if not lost:
                request.write(_write_json(request, *answer))
                request.finish()

        def failed(failure: Failure) -> Answer:
            self._log.failure("webhooks API request failed", failure)
            return 500, {"error": "internal error"}

        Deferred.fromCoroutine(work).addErrback(failed).addCallback(done)
        return NOT_DONE_YET

    async def _list(self, request: Request) -> Answer:
        return 200, {"items": [s.describe() for s in self._service.subscriptions()]}

    async def _create(self, request: Request) -> Answer:
        # Twisted declares Request.content = None (its docstring: a BinaryIO)
        body = request.content.read(MAX_REQUEST_BODY + 1)  # type: ignore[attr-defined]
        if len(body) > MAX_REQUEST_BODY:
            return 413, {"error": "request body too large"}
        try:
            subscription = await self._service.register(parse_new_subscription(body))
        except SubscriptionLimitError as e:
            # 409: the collection's state, not the request, is the problem, and deleting a
            # subscription resolves it (429 would promise that waiting helps; 507 is a 5xx).
            self._log.warn("webhook subscription refused: {reason}", reason=str(e))
            return 409, {"error": str(e)}
        except (RequestError, RegistrationError) as e:
            self._log.info("webhook subscription refused: {reason}", reason=str(e))
            return 400, {"error": str(e)}
        return 201, {
            "id": subscription.id, "url": subscription.url,
            "channels": list(subscription.channels), "secret": subscription.secret,
        }

    async def _get(self, request: Request, subscription_id: str) -> Answer:
        subscription = self._service.get(subscription_id)
        if subscription is None:
            return 404, {"error": f"no subscription {subscription_id}"}
        return 200, subscription.describe()

    async def _delete(self, request: Request, subscription_id: str) -> Answer:
        if not await self._service.remove(subscription_id):
            return 404, {"error": f"no subscription {subscription_id}"}
        return 204, None

    async def _failed(self, request: Request, subscription_id: str) -> Answer:
        if self._service.get(subscription_id) is None:
            return 404, {"error": f"no subscription {subscription_id}"}
        return 200, {"items": await self._service.dead_letters(subscription_id)}
