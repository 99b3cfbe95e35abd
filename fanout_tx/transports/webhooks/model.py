"""Webhook value types (subscription, delivery) and the pure parser for a create request.

Both value types round-trip through JSON, which is how the Redis store keeps them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from fanout_tx.core.codecs.json_input import loads
from fanout_tx.core.formats.base import FormatError, headers
from fanout_tx.core.formats.webhook import check_header_names
from fanout_tx.core.items import MAX_CHANNEL_LENGTH
from fanout_tx.grip.instruct import MAX_REWIND
from fanout_tx.transports.webhooks.signing import SecretError, secret_key
from fanout_tx.transports.webhooks.ssrf import UrlError, parse_url

MAX_CHANNELS = 100
# Characters of ``last_error`` a dead letter keeps, so each one stays small.
MAX_ERROR_LENGTH = 500

Headers = tuple[tuple[str, str], ...]


class RequestError(ValueError):
    """A subscription request is invalid; ``str()`` is the reason sent back with the 400."""


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    channels: tuple[str, ...]
    secret: str
    headers: Headers = ()

    def describe(self) -> dict[str, Any]:
        """What list/get show: never the secret (only the create answer has it), nor the
        custom headers' values, which may be the target's credentials (their names only),
        nor the URL's path or query (``redacted_url``)."""
        return {
            "id": self.id, "url": redacted_url(self.url), "channels": list(self.channels),
            "headers": [name for name, _value in self.headers],
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Subscription:
        obj = json.loads(text)
        return cls(
            obj["id"], obj["url"], tuple(obj["channels"]), obj["secret"],
            tuple((k, v) for k, v in obj["headers"]),
        )


def redacted_url(url: str) -> str:
    """``url`` as list/get show it: scheme, host and port; a path or query becomes ``/…``.
    Either is often the hook's only credential, even its first segment
    (``https://hooks.slack.com/services/T0/B0/X``, ``https://api.telegram.org/bot<token>/``),
    so none of it is shown, as in the logs (logs.url_for_log)."""
    parts = urlsplit(url)
    hidden = parts.path not in ("", "/") or parts.query
    return f"{parts.scheme}://{parts.netloc}/" + ("\u2026" if hidden else "")


@dataclass
class Delivery:
    """One item for one subscription until it succeeds or becomes a dead letter.

    ``due`` is the wall-clock time (the injected clock's seconds) of the next attempt, so a
    restarted server picks up the schedule where the previous one left it.
    """

    webhook_id: str
    subscription_id: str
    channel: str
    method: str
    url: str
    headers: Headers
    body: bytes
    attempts: int = 0
    due: float = 0.0
    last_status: int | None = None
    last_error: str | None = None

    @property
    def size(self) -> int:
        """Bytes it holds in memory, roughly: what ``max_pending_bytes`` counts."""
        return (len(self.body) + len(self.url)
                + sum(len(name) + len(value) for name, value in self.headers))

    def to_json(self) -> str:
        obj = asdict(self)
        obj["body"] = base64.b64encode(self.body).decode("ascii")
        return json.dumps(obj)

    @classmethod
    def from_json(cls, text: str) -> Delivery:
        obj = json.loads(text)
        obj["body"] = base64.b64decode(obj["body"])
        obj["headers"] = tuple((k, v) for k, v in obj["headers"])
        return cls(**obj)

    def dead_letter(self) -> dict[str, Any]:
        """What the dead letters keep of it: metadata only, never the body."""
        error = self.last_error
        if error is not None and len(error) > MAX_ERROR_LENGTH:
            error = error[:MAX_ERROR_LENGTH - 1] + "\u2026"
        return {
            "webhook-id": self.webhook_id, "channel": self.channel, "attempts": self.attempts,
            "last_status": self.last_status, "last_error": error,
        }


@dataclass(frozen=True)
class NewSubscription:
    url: str
    channels: tuple[str, ...]
    secret: str | None
    headers: Headers
    verify: bool | None
    # Built-in history (docs/reliability.rst): the backlog to deliver first, once, at
    # creation: the items after ``since`` on each channel, or the newest ``rewind``.
    since: str | None = None
    rewind: int = 0


def _channels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("channels must be a non-empty list of channel names")
    if len(value) > MAX_CHANNELS:
        raise RequestError(f"at most {MAX_CHANNELS} channels per subscription")
    for name in value:
        if not isinstance(name, str) or not name or len(name) > MAX_CHANNEL_LENGTH:
            raise RequestError(
                f"channels must be strings of 1 to {MAX_CHANNEL_LENGTH} characters"
            )
    return tuple(dict.fromkeys(value))


def parse_new_subscription(body: bytes) -> NewSubscription:
    """``{"url", "channels", "secret"?, "headers"?, "verify"?}`` or RequestError."""
    try:
        obj = loads(body)
    except ValueError:
        raise RequestError("body is not valid JSON") from None
    if not isinstance(obj, Mapping):
        raise RequestError("body must be a JSON object")
    unknown = sorted(set(obj) - {"url", "channels", "secret", "headers", "verify", "since",
                                 "rewind"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}")
    try:
        url = parse_url(obj.get("url")).url
    except UrlError as e:
        raise RequestError(str(e)) from None
    secret = obj.get("secret")
    if secret is not None:
        if not isinstance(secret, str):
            raise RequestError("secret must be a string")
        try:
            secret_key(secret)
        except SecretError as e:
            raise RequestError(str(e)) from None
    verify = obj.get("verify")
    if verify is not None and not isinstance(verify, bool):
        raise RequestError("verify must be true or false")
    if obj.get("headers") is not None and not isinstance(obj["headers"], Mapping):
        raise RequestError("headers must be an object of strings")
    try:
        pairs = headers(obj)
        check_header_names(pairs)
    except FormatError as e:
        raise RequestError(str(e)) from None
    since = obj.get("since")
    if since is not None and (not isinstance(since, str) or not since):
        raise RequestError("since must be a non-empty item id")
    rewind = obj.get("rewind", 0)
    if isinstance(rewind, bool) or not isinstance(rewind, int) or not 0 <= rewind <= MAX_REWIND:
        raise RequestError(f"rewind must be a whole number, 0 to {MAX_REWIND}")
    return NewSubscription(url, _channels(obj.get("channels")), secret, pairs, verify, since,
                           rewind)
