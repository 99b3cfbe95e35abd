"""Pure: the backend's answer to a POSTed stanza -> a BackendAnswer, or AnswerError.

The answer is ``Grip-Channel`` headers and/or an ``application/grip-instruct`` JSON body
(SPEC B1). Everything is validated before anything is applied, so a bad answer changes
nothing and the sender gets one clear error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.words.xish import domish

from fanout_tx.core.codecs.json_input import loads
from fanout_tx.core.formats import FormatError
from fanout_tx.core.formats.xmpp import parse_stanza, xml_text
from fanout_tx.core.headers import split_list, split_params
from fanout_tx.grip.instruct import INSTRUCT_CONTENT_TYPE, MAX_REWIND, Channel

REPLY_STANZAS = ("message", "presence", "iq")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ANSWER_KEYS = frozenset({"subscribe", "unsubscribe", "reply", "set-meta"})


class AnswerError(ValueError):
    """The backend's answer is malformed; the text names the problem."""


@dataclass(frozen=True)
class BackendAnswer:
    subscribe: tuple[Channel, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    replies: tuple[domish.Element, ...] = ()
    set_meta: Mapping[str, str] = field(default_factory=dict)


def parse_grip_channels(values: Iterable[str]) -> list[Channel]:
    """``Grip-Channel: name[; prev-id=ID][; filter=F]...``, repeated and/or comma-separated.
    ``prev-id`` means nothing for XMPP and is ignored."""
    result = []
    for value in values:
        for entry in split_list(value):
            name, params = split_params(entry)
            if not name:
                raise AnswerError(f"Grip-Channel entry without a channel name: {entry!r}")
            filters = tuple(v for k, v in params if k == "filter" and v)
            result.append(Channel(name, None, filters))
    return result


def _channel_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise AnswerError(f"{what} must be a non-empty channel name")
    return value


def _subscription(entry: Any) -> Channel:
    if isinstance(entry, Mapping):
        filters = entry.get("filters", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise AnswerError("subscribe filters must be a list of filter names")
        name = _channel_name(entry.get("channel"), "subscribe channel")
        # Built-in history (docs/reliability.rst): replay before live items.
        since = entry.get("since")
        if since is not None and (not isinstance(since, str) or not since):
            raise AnswerError("subscribe since must be a non-empty item id")
        rewind = entry.get("rewind", 0)
        if isinstance(rewind, bool) or not isinstance(rewind, int) or not (
                0 <= rewind <= MAX_REWIND):
            raise AnswerError(f"subscribe rewind must be a whole number, 0 to {MAX_REWIND}")
        return Channel(name, None, tuple(filters), since, rewind)
    return Channel(_channel_name(entry, "subscribe entry"))


def _list(document: Mapping[str, Any], key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise AnswerError(f"{key} must be a list")
    return value


def _set_meta(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise AnswerError("set-meta must be an object")
    result = {}
    for key, meta_value in value.items():
        if not isinstance(key, str) or not _META_KEY.match(key):
            raise AnswerError(f"set-meta key {key!r} must be letters, digits, - or _")
        if not isinstance(meta_value, str) or "\r" in meta_value or "\n" in meta_value:
            raise AnswerError(f"set-meta value for {key} must be a one-line string")
        try:
            xml_text(meta_value, f"set-meta value for {key}")
        except FormatError as e:
            raise AnswerError(str(e)) from None
        result[key] = meta_value
    return result


def _reply(text: Any) -> domish.Element:
    if not isinstance(text, str):
        raise AnswerError("reply entries must be XML strings")
    try:
        return parse_stanza(text, REPLY_STANZAS, "reply")
    except FormatError as e:
        raise AnswerError(str(e)) from None


def parse_instruct(body: bytes) -> BackendAnswer:
    """The ``application/grip-instruct`` JSON body."""
    try:
        document = loads(body) if body.strip() else {}
    except ValueError:
        raise AnswerError("grip-instruct body is not valid JSON") from None
    if not isinstance(document, Mapping):
        raise AnswerError("grip-instruct body must be a JSON object")
    unknown = sorted(set(document) - _ANSWER_KEYS)
    if unknown:
        raise AnswerError(f"unknown grip-instruct key {unknown[0]!r}")
    return BackendAnswer(
        subscribe=tuple(_subscription(e) for e in _list(document, "subscribe")),
        unsubscribe=tuple(
            _channel_name(e, "unsubscribe entry") for e in _list(document, "unsubscribe")
        ),
        replies=tuple(_reply(r) for r in _list(document, "reply")),
        set_meta=_set_meta(document.get("set-meta", {})),
    )


def parse_answer(
    grip_channels: Iterable[str], content_type: str | None, body: bytes
) -> BackendAnswer:
    """A 2xx answer: ``Grip-Channel`` header values plus, for a grip-instruct body, its JSON."""
    from_headers = tuple(parse_grip_channels(grip_channels))
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != INSTRUCT_CONTENT_TYPE:
        return BackendAnswer(subscribe=from_headers)
    answer = parse_instruct(body)
    return BackendAnswer(
        subscribe=from_headers + answer.subscribe,
        unsubscribe=answer.unsubscribe,
        replies=answer.replies,
        set_meta=answer.set_meta,
    )
