"""``GET /channels/{channel}/items?since=ID&limit=N`` on the publish port: a channel's
built-in history as JSON (docs/reliability.rst), for backends that kept their own copy only
to answer GRIP recovery. Mounted by tap.py when ``[history]`` is on; authentication is the
publish port's (PublishRoot checks it before this resource is reached).

Answers: 200 ``{"channel", "items": [item as published, oldest first], "last-id"}``; 400 for
a bad parameter; 404 when history holds nothing for the channel; 410 when ``since`` is no
longer (or never was) in it, so the caller knows to fall back to its own store; 503 when the
store (Redis) cannot be read. Errors are ``{"error": reason}``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from fanout_tx.core.codecs.publish_form import item_to_publish_json
from fanout_tx.core.interfaces import IHistory
from fanout_tx.core.items import MAX_CHANNEL_LENGTH, Item

DEFAULT_LIMIT = 100
# The most items one answer holds; a longer history is read in pages (since = last id).
MAX_LIMIT = 1000


class HistoryRequestError(ValueError):
    """A bad path or parameter; ``str()`` is the reason the caller gets with a 400."""


def _json(request: Request, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode("utf-8") + b"\n"


def _parameter(request: Request, name: bytes) -> str | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HistoryRequestError(f"{name.decode()} given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HistoryRequestError(f"{name.decode()} is not UTF-8") from None


def parse_query(request: Request) -> tuple[str, str | None, int]:
    """(channel, since, limit) from the path and query, or HistoryRequestError."""
    segments = request.postpath or []
    if len(segments) != 2 or segments[1] != b"items" or not segments[0]:
        raise LookupError("not found")
    try:
        channel = unquote(segments[0].decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise HistoryRequestError("channel is not UTF-8") from None
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise HistoryRequestError(f"channel longer than {MAX_CHANNEL_LENGTH} characters")
    since = _parameter(request, b"since")
    if since == "":
        raise HistoryRequestError("since is empty")
    text = _parameter(request, b"limit")
    if text is None:
        return channel, since, DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise HistoryRequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return channel, since, int(text)


class HistoryResource(Resource):
    """``/channels/...``: reads ``IHistory``, never writes it."""

    isLeaf = True
    _log = Logger()

    def __init__(self, history: IHistory) -> None:
        super().__init__()
        self._history = history

    @override
    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _json(request, 405, {"error": "method not allowed"})
        try:
            channel, since, limit = parse_query(request)
        except LookupError:
            return _json(request, 404, {"error": "not found"})
        except HistoryRequestError as e:
            self._log.info("history API: 400: {reason}", reason=str(e))
            return _json(request, 400, {"error": str(e)})
        reading: Deferred[Any]
        if since is None:
            reading = self._history.last(channel, limit).addCallback(
                lambda items: (items, bool(items)))
        else:
            reading = self._history.since(channel, since, limit).addCallback(
                self._known, channel)
        reading.addCallback(self._answer, request, channel, since)
        reading.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _known(self, items: list[Item] | None, channel: str) -> Deferred[Any]:
        """(items, channel known); for a ``since`` not kept: (None, whether anything is)."""
        if items is not None:
            return succeed((items, True))
        return self._history.last(channel, 1).addCallback(lambda kept: (None, bool(kept)))

    def _answer(self, outcome: tuple[list[Item] | None, bool], request: Request, channel: str,
                since: str | None) -> None:
        items, known = outcome
        if not known:
            body = _json(request, 404, {"error": f"no history for channel {channel!r}"})
        elif items is None:
            body = _json(request, 410, {"error": f"{since!r} is older than the history of "
                                                 f"channel {channel!r}"})
        else:
            body = _json(request, 200, {
                "channel": channel,
                "items": [item_to_publish_json(item) for item in items],
                "last-id": items[-1].id if items else since,
            })
        self._finish(request, body)

    def _failed(self, failure: Failure, request: Request) -> None:
        self._log.warn("history API: history unreadable: {error}",
                       error=failure.getErrorMessage())
        self._finish(request, _json(request, 503, {"error": "history is unavailable"}))

    @staticmethod
    def _finish(request: Request, body: bytes) -> None:
        """Complete the answer with a length, unless the caller went away meanwhile."""
        if request.finished or request.channel is None:
            return
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
