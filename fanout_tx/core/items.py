"""Pure publish item parsing: JSON / tnetstring / dicts -> Item values, or a PublishError.

One bad item rejects the whole batch: parsing is all-or-nothing so nothing partial is
published. Formats may sit under ``formats`` or, in the legacy form, at the item's top level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.codecs.json_input import LoneSurrogateError, loads
from fanout_tx.core.formats import PARSERS, Format, FormatError


class PublishError(ValueError):
    """A publish request or message is invalid; ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class Item:
    channel: str
    formats: Mapping[str, Format]
    id: str | None = None
    prev_id: str | None = None
    no_seq: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)
    # For an item without an id shared through Redis: a random name the publishing instance
    # gives it, the same on every instance, so each derives the same webhook-id.
    share_key: str | None = None
    # True for an item received from another instance (Redis), which recorded it in the
    # shared history already: the Redis history keeps what the accepting instance records.
    remote: bool = False


_ITEM_KEYS = {"channel", "id", "prev-id", "no-seq", "meta", "formats"}

# The largest channel name accepted; Pushpin has no documented limit, this keeps keys sane.
MAX_CHANNEL_LENGTH = 1024


def _text_field(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "channel":
        return str(value)
    if not isinstance(value, str):
        raise PublishError(f"{key} must be a string")
    return value


def parse_item(obj: Any, channel: str | None = None) -> Item:
    """Validate one item object. ``channel`` supplies it when the transport carries it apart."""
    if not isinstance(obj, Mapping):
        raise PublishError("item must be an object")
    name = channel if channel is not None else _text_field(obj, "channel")
    if not name:
        raise PublishError("item has no channel")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise PublishError(f"channel name longer than {MAX_CHANNEL_LENGTH} characters")
    no_seq = obj.get("no-seq", False)
    if not isinstance(no_seq, bool):
        raise PublishError("no-seq must be true or false")
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise PublishError("meta must be an object of string values")

    sources: dict[str, Any] = {k: v for k, v in obj.items() if k in PARSERS}
    nested = obj.get("formats")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise PublishError("formats must be an object")
        if not nested.keys() <= PARSERS.keys():  # the usual case costs one set operation
            unknown = min(k for k in nested if k not in PARSERS)
            raise PublishError(f"Invalid format: unknown format {unknown!r}")
        sources.update(nested)
    if not sources:
        raise PublishError("item has no formats")
    formats = {}
    for format_name, format_obj in sources.items():
        if not isinstance(format_obj, Mapping):
            raise PublishError(f"Invalid format: {format_name} must be an object")
        try:
            formats[format_name] = PARSERS[format_name](format_obj)
        except FormatError as e:
            raise PublishError(f"Invalid format: {format_name}: {e}") from None
    return Item(
        channel=name,
        formats=formats,
        id=_text_field(obj, "id"),
        prev_id=_text_field(obj, "prev-id"),
        no_seq=no_seq,
        meta=dict(meta),
    )


def parse_items_json(body: bytes) -> list[Item]:
    """The HTTP API body ``{"items": [...]}``; every item must be valid."""
    try:
        document = loads(body)
    except LoneSurrogateError as e:
        raise PublishError(f"Body is not valid JSON: {e}.") from None
    except ValueError:
        raise PublishError("Body is not valid JSON.") from None
    if not isinstance(document, Mapping):
        raise PublishError("Body must be a JSON object.")
    items = document.get("items")
    if not isinstance(items, list):
        raise PublishError("Invalid format: object does not contain 'items' list")
    result = []
    for index, obj in enumerate(items):
        try:
            result.append(parse_item(obj))
        except PublishError as e:
            raise PublishError(f"item {index}: {e}") from None
    return result


# ``-bin`` values stay bytes too: ws-message takes them raw, as Pushpin (formats/base.payload).
_BINARY_KEYS = frozenset({"content", "body", "content-bin", "body-bin"})


def _from_tnetstring(value: Any, key: str = "") -> Any:
    """tnetstring bytes -> text, except payload fields, which stay bytes."""
    if isinstance(value, bytes):
        if key in _BINARY_KEYS:
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise PublishError(f"{key or 'value'} is not UTF-8") from None
    if isinstance(value, dict):
        result = {}
        for k, v in value.items():
            name = _from_tnetstring(k)
            result[name] = _from_tnetstring(v, name)
        return result
    if isinstance(value, list):
        return [_from_tnetstring(v) for v in value]
    return value


def decode_message(payload: bytes) -> Any:
    """A ZeroMQ payload: tnetstring, ``T`` + tnetstring, or ``J`` + JSON -> plain objects."""
    if payload.startswith(b"J"):
        try:
            return loads(payload[1:])
        except LoneSurrogateError as e:
            raise PublishError(f"message is not valid JSON: {e}") from None
        except ValueError:
            raise PublishError("message is not valid JSON") from None
    raw = payload[1:] if payload.startswith(b"T") else payload
    try:
        return _from_tnetstring(tnetstring.loads(raw))
    except tnetstring.TnetstringError as e:
        raise PublishError(f"message is not a valid tnetstring: {e}") from None
    except RecursionError:
        raise PublishError("message is not a valid tnetstring: nesting too deep") from None
