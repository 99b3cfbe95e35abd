"""Pure: an Item back in the JSON publish form (SPEC A4), for the history API.

The inverse of the format parsers closely enough for a backend to read what was published:
the payload under the field the format takes it in (``body`` for ``http-response`` and
``http-request``, ``content`` otherwise), as text when it is UTF-8 (and not a binary WebSocket
message), else base64 under the
``-bin`` name; the format's other fields as they were parsed (header pairs as lists, fields
the publish left out as null).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from fanout_tx.core.formats import Format
from fanout_tx.core.items import Item

_BODY_FORMATS = frozenset({"http-response", "http-request"})


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def format_to_json(fmt: Format) -> dict[str, Any]:
    document: dict[str, Any] = {"action": fmt.action}
    document.update((k, _json_value(v)) for k, v in fmt.fields.items())
    if fmt.content is not None:
        key = "body" if fmt.name in _BODY_FORMATS else "content"
        try:
            if fmt.fields.get("type") == "binary":
                raise UnicodeDecodeError("utf-8", b"", 0, 0, "a binary message")
            document[key] = fmt.content.decode("utf-8")
        except UnicodeDecodeError:
            document[f"{key}-bin"] = base64.b64encode(fmt.content).decode("ascii")
    if fmt.content_filters:
        document["content-filters"] = list(fmt.content_filters)
    return document


def item_to_publish_json(item: Item) -> dict[str, Any]:
    document: dict[str, Any] = {"channel": item.channel, "id": item.id}
    if item.prev_id is not None:
        document["prev-id"] = item.prev_id
    if item.meta:
        document["meta"] = dict(item.meta)
    document["formats"] = {name: format_to_json(fmt) for name, fmt in item.formats.items()}
    return document
