"""Pure wire codec for sharing parsed Items between instances (Redis): Items -> JSON -> Items.

Items are shared already parsed, so the receiving instance skips validation and sees exactly
the values the accepting instance delivered locally. ``decode_items(encode_items(x)) == x``
holds for every Item the format parsers make: ``Format.fields`` may hold bytes, tuples and
mappings, so every non-JSON value is written as a one-key tagged object (``{"b": base64}``,
``{"t": [...]}``, ``{"m": [[key, value], ...]}``); plain JSON objects never appear as values,
which keeps the tags unambiguous. A payload from a newer version is refused with
ItemCodecError rather than half understood.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from fanout_tx.core.codecs.json_input import loads
from fanout_tx.core.formats import Format
from fanout_tx.core.items import Item

WIRE_VERSION = 1


class ItemCodecError(ValueError):
    """A value cannot be encoded, or a payload is not a valid encoding of items."""


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"t": [_encode_value(v) for v in value]}
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, Mapping):
        return {"m": [[_encode_value(k), _encode_value(v)] for k, v in value.items()]}
    raise ItemCodecError(f"cannot share a value of type {type(value).__name__}")


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        raise ItemCodecError("mapping key is not hashable") from None
    return value


def _decode_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "b" and isinstance(inner, str):
            return _b64(inner)
        if tag == "t" and isinstance(inner, list):
            return tuple(_decode_value(v) for v in inner)
        if tag == "m" and isinstance(inner, list):
            pairs = [_pair(p) for p in inner]
            return {_hashable(_decode_value(k)): _decode_value(v) for k, v in pairs}
    raise ItemCodecError("malformed value")


def _pair(value: Any) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise ItemCodecError("malformed mapping entry")
    return value[0], value[1]


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ItemCodecError("malformed base64") from None


def item_to_json(item: Item) -> dict[str, Any]:
    """One Item as a JSON-ready object."""
    return {
        "channel": item.channel,
        "id": item.id,
        "prev-id": item.prev_id,
        "no-seq": item.no_seq,
        "meta": dict(item.meta),
        "key": item.share_key,
        "formats": [
            [key, fmt.name, fmt.action,
             None if fmt.content is None else base64.b64encode(fmt.content).decode("ascii"),
             _encode_value(fmt.fields), list(fmt.content_filters)]
            for key, fmt in item.formats.items()
        ],
    }


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise ItemCodecError(f"{what} has the wrong type")
    return value


def _format_from_json(value: Any) -> tuple[str, Format]:
    entry = _expect(value, list, "format")
    if len(entry) != 6:
        raise ItemCodecError("format entry must have 6 fields")
    key, name, action, content, fields, filters = entry
    fields = _decode_value(fields)
    filters = _expect(filters, list, "content filters")
    return _expect(key, str, "format key"), Format(
        name=_expect(name, str, "format name"),
        action=_expect(action, str, "format action"),
        content=None if content is None else _b64(_expect(content, str, "content")),
        fields=_expect(fields, dict, "format fields"),
        content_filters=tuple(_expect(f, str, "content filter") for f in filters),
    )


def item_from_json(value: Any) -> Item:
    """The inverse of item_to_json; raises ItemCodecError on anything else."""
    obj = _expect(value, dict, "item")
    try:
        channel, item_id, prev_id = obj["channel"], obj["id"], obj["prev-id"]
        no_seq, meta, formats = obj["no-seq"], obj["meta"], obj["formats"]
    except KeyError as e:
        raise ItemCodecError(f"item lacks {e.args[0]!r}") from None
    meta = _expect(meta, dict, "meta")
    share_key = obj.get("key")  # absent in what older instances wrote
    if not all(isinstance(v, str) for v in meta.values()):
        raise ItemCodecError("meta values must be strings")
    return Item(
        channel=_expect(channel, str, "channel"),
        formats=dict(_format_from_json(f) for f in _expect(formats, list, "formats")),
        id=None if item_id is None else _expect(item_id, str, "id"),
        prev_id=None if prev_id is None else _expect(prev_id, str, "prev-id"),
        no_seq=_expect(no_seq, bool, "no-seq"),
        meta=meta,
        share_key=None if share_key is None else _expect(share_key, str, "key"),
    )


def encode_items(items: Sequence[Item]) -> bytes:
    """A batch of Items as compact ASCII JSON."""
    document = {"v": WIRE_VERSION, "items": [item_to_json(item) for item in items]}
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")
    except ValueError as e:  # NaN or infinity in a format field
        raise ItemCodecError(str(e)) from None


def decode_items(payload: bytes) -> list[Item]:
    """The inverse of encode_items; raises ItemCodecError on anything else."""
    return [item_from_json(obj) for obj in decode_batch(payload)]


def decode_batch(payload: bytes) -> list[Any]:
    """encode_items' batch as JSON values, one per item, for ``item_from_json`` (or, when
    only channel and id are wanted, ``item_address``)."""
    try:
        document = loads(payload)
    except ValueError as e:  # lone surrogates included: no input lets them in
        raise ItemCodecError(f"payload is not JSON: {e}") from None
    if not isinstance(document, dict) or document.get("v") != WIRE_VERSION:
        raise ItemCodecError("payload is not a version-1 item batch")
    return _expect(document.get("items"), list, "items")


def item_address(value: Any) -> tuple[str, str | None]:
    """An encoded item's channel and id, checked as ``item_from_json`` checks them."""
    obj = _expect(value, dict, "item")
    channel, item_id = obj.get("channel"), obj.get("id")
    return (_expect(channel, str, "channel"),
            None if item_id is None else _expect(item_id, str, "id"))
