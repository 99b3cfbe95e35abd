"""The GRIP content filters ``build-id`` and ``var-subst``, as pure functions.

Both rewrite published content per subscriber with the ``%`` grammar of
:mod:`fanout_tx.grip.directives`:

- ``var-subst``: ``%(NAME)s`` -> the subscription meta value NAME.
- ``build-id``: the subscription meta ``id_format`` is rendered first, ``%(CHANNEL)s``
  being the last id the subscriber knows on CHANNEL (its prev-id, advanced by each item it
  receives); then in the content ``%I`` is that id and ``%(LITERAL)I`` is LITERAL, both
  hex-encoded when the meta ``id_encoding`` is ``hex``.

As Pushpin, a subscriber with several content filters gets them in the order its
subscription lists them; the origin's own body of a stream hold goes through ``build-id``
only, and with no prev ids (so a bare ``%I`` there is an error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from fanout_tx.grip.directives import FilterError, expand

BUILD_ID = "build-id"
VAR_SUBST = "var-subst"
CONTENT_FILTERS = frozenset({BUILD_ID, VAR_SUBST})
PrevIds = Mapping[str, str | None]
"""Channel (as the subscription names it) -> the last id the subscriber knows, or None."""


def substitute_vars(content: bytes, meta: Mapping[str, str]) -> bytes:
    """``var-subst``: ``%(name)s`` -> the subscription's meta value; unknown names fail."""

    def handle(directive: str, argument: bytes | None) -> bytes:
        return _variable(directive, argument, meta, "variable")

    return expand(content, handle)


def render_id(id_format: str, prev_ids: PrevIds) -> bytes | None:
    """The subscriber's current id from its ``id_format``; None when it has no channels
    (as Pushpin: a channel without a prev-id is there, but as an unknown variable)."""
    if not prev_ids:
        return None
    known = {name: value for name, value in prev_ids.items() if value is not None}

    def handle(directive: str, argument: bytes | None) -> bytes:
        return _variable(directive, argument, known, "channel prev-id")

    return expand(id_format.encode("utf-8"), handle)


def render_content(content: bytes, default_id: bytes | None, hex_ids: bool = False) -> bytes:
    """``%I`` -> ``default_id`` (an error when there is none), ``%(LITERAL)I`` -> LITERAL."""

    def handle(directive: str, argument: bytes | None) -> bytes:
        if directive != "I":
            raise FilterError(f"unknown directive {directive!r}")
        value = argument if argument is not None else default_id
        if value is None:
            raise FilterError("no id given and no id_format id for this subscription")
        return value.hex().encode("ascii") if hex_ids else value

    return expand(content, handle)


def build_id(content: bytes, meta: Mapping[str, str], prev_ids: PrevIds) -> bytes:
    """``build-id`` for one subscriber: needs the meta ``id_format``."""
    id_format = meta.get("id_format")
    if id_format is None:
        raise FilterError("build-id needs the subscription meta 'id_format'")
    try:
        default_id = render_id(id_format, prev_ids)
    except FilterError as e:
        raise FilterError(f"failed to render id_format: {e}") from None
    encoding = meta.get("id_encoding")
    if encoding is not None and encoding != "hex":
        raise FilterError(f"unsupported id_encoding {encoding!r}")
    return render_content(content, default_id, encoding == "hex")


def apply_content_filters(
    names: Iterable[str], content: bytes, meta: Mapping[str, str],
    prev_ids: Callable[[], PrevIds],
) -> bytes:
    """The content filters in ``names``, in that order (other names are skipped);
    ``prev_ids`` is only asked for by ``build-id``."""
    for name in names:
        if name == BUILD_ID:
            content = build_id(content, meta, prev_ids())
        elif name == VAR_SUBST:
            content = substitute_vars(content, meta)
    return content


def filter_response_body(body: bytes, filters: Iterable[str], meta: Mapping[str, str]) -> bytes:
    """The origin's own body of a stream hold (Pushpin's ``ResponseContent`` target):
    ``build-id`` when any channel asks for it, with no prev ids in the context."""
    if body and BUILD_ID in filters:
        return build_id(body, meta, {})
    return body


def _variable(directive: str, argument: bytes | None, values: Mapping[str, str | bytes],
              kind: str) -> bytes:
    if directive != "s":
        raise FilterError(f"unknown directive {directive!r}")
    if argument is None:
        raise FilterError("directive 's' needs an argument")
    name = argument.decode("utf-8", "replace")
    value = values.get(name)
    if value is None:
        raise FilterError(f"no such {kind} {name!r}")
    return value.encode("utf-8") if isinstance(value, str) else value
