"""Publish item parsing: JSON and tnetstring, nested and legacy formats, precise errors."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.formats import PARSERS
from fanout_tx.core.items import (
    MAX_CHANNEL_LENGTH,
    PublishError,
    decode_message,
    parse_item,
    parse_items_json,
)

STREAM = {"http-stream": {"content": "hi"}}


class ParseItemTests(SynchronousTestCase):
    def assert_error(self, obj: Any, text: str, **kwargs: Any) -> None:
        error = self.assertRaises(PublishError, parse_item, obj, **kwargs)
        self.assertIn(text, str(error))

    def test_full_item(self) -> None:
        """Every item-level field is read; numeric ids become text."""
        item = parse_item({"channel": "c", "id": 7, "prev-id": "6", "no-seq": True,
                           "meta": {"sender": "a"}, "formats": STREAM})
        self.assertEqual((item.channel, item.id, item.prev_id, item.no_seq),
                         ("c", "7", "6", True))
        self.assertEqual(item.meta, {"sender": "a"})
        self.assertEqual(item.formats["http-stream"].content, b"hi")

    def test_defaults(self) -> None:
        item = parse_item({"channel": "c", "formats": STREAM})
        self.assertEqual((item.id, item.prev_id, item.no_seq, item.meta), (None, None, False, {}))

    def test_legacy_top_level_formats(self) -> None:
        """Formats at the item's top level (legacy form) count as well as nested ones."""
        item = parse_item({"channel": "c", "http-stream": {"content": "s"},
                           "formats": {"ws-message": {"content": "w"}}})
        self.assertEqual(sorted(item.formats), ["http-stream", "ws-message"])

    def test_channel_from_transport(self) -> None:
        """A channel given apart (ZeroMQ SUB) is used; the object needs none."""
        self.assertEqual(parse_item({"formats": STREAM}, channel="z").channel, "z")

    def test_errors(self) -> None:
        """Each problem gets a one-line reason naming it."""
        self.assert_error([], "item must be an object")
        self.assert_error({"formats": STREAM}, "no channel")
        self.assert_error({"channel": "", "formats": STREAM}, "no channel")
        self.assert_error({"channel": 5, "formats": STREAM}, "channel must be a string")
        self.assert_error({"channel": "x" * (MAX_CHANNEL_LENGTH + 1), "formats": STREAM},
                          "longer than")
        self.assert_error({"channel": "c"}, "no formats")
        self.assert_error({"channel": "c", "formats": []}, "formats must be an object")
        self.assert_error({"channel": "c", "formats": {"carrier-pigeon": {}}},
                          "Invalid format: unknown format 'carrier-pigeon'")
        self.assert_error({"channel": "c", "formats": {"http-stream": "x"}},
                          "Invalid format: http-stream must be an object")
        self.assert_error({"channel": "c", "formats": {"http-stream": {}}},
                          "Invalid format: http-stream: content or content-bin is required")
        self.assert_error({"channel": "c", "no-seq": "yes", "formats": STREAM}, "no-seq")
        self.assert_error({"channel": "c", "meta": {"a": 1}, "formats": STREAM}, "meta")
        self.assert_error({"channel": "c", "id": [], "formats": STREAM}, "id must be a string")


class FormatTests(SynchronousTestCase):
    def fmt(self, name: str, obj: dict[str, Any]) -> Any:
        return parse_item({"channel": "c", "formats": {name: obj}}).formats[name]

    def assert_invalid(self, name: str, obj: dict[str, Any], text: str) -> None:
        error = self.assertRaises(PublishError, self.fmt, name, obj)
        self.assertIn(text, str(error))

    def test_http_response(self) -> None:
        fmt = self.fmt("http-response", {"code": 404, "reason": "Nope",
                                         "headers": [["A", "1"], ["A", "2"]], "body": "b"})
        self.assertEqual((fmt.action, fmt.content, fmt.fields["code"], fmt.fields["reason"]),
                         ("send", b"b", 404, "Nope"))
        self.assertEqual(fmt.fields["headers"], (("A", "1"), ("A", "2")))
        default = self.fmt("http-response", {"headers": {"X": "y"}})
        self.assertEqual((default.content, default.fields["code"]), (b"", 200))
        self.assertEqual(self.fmt("http-response", {"body-bin": "AAE="}).content, b"\x00\x01")
        self.assertEqual(self.fmt("http-response", {"action": "hint"}).action, "hint")

    def test_http_response_errors(self) -> None:
        self.assert_invalid("http-response", {"body": "a", "body-bin": "YQ=="}, "only one of")
        self.assert_invalid("http-response", {"body-bin": "!!"}, "not valid base64")
        self.assert_invalid("http-response", {"code": 42}, "code must be")
        self.assert_invalid("http-response", {"headers": [["Bad Name", "v"]]}, "invalid header")
        self.assert_invalid("http-response", {"headers": {"A": "x\r\ny"}}, "invalid header")
        # Anything that would split or break the held client's response head is refused here,
        # not found out at delivery (where it used to drop the client).
        self.assert_invalid("http-response", {"headers": {"é": "x"}}, "invalid header")
        self.assert_invalid("http-response", {"headers": {"A": "x\x00"}}, "invalid header")
        self.assert_invalid("http-response", {"reason": "OK\r\nSet-Cookie: evil=1"},
                            "reason must be an RFC 9112 reason phrase")
        self.assert_invalid("http-response", {"reason": "OK \u20ac"}, "reason must be")
        for code in (100, 101, 199, 600, 999):
            self.assert_invalid("http-response", {"code": code}, "from 200 to 599")

    def test_http_response_framing_headers_dropped(self) -> None:
        """As Pushpin: the server frames what it writes, so a publisher's framing and
        hop-by-hop headers (and those its Connection header names) are dropped."""
        fmt = self.fmt("http-response", {"headers": [
            ["Transfer-Encoding", "chunked"], ["content-length", "5"], ["Connection", "X-A"],
            ["X-A", "1"], ["Upgrade", "h2c"], ["Keep-Alive", "timeout=5"], ["TE", "trailers"],
            ["Trailer", "X-B"], ["Proxy-Authenticate", "Basic"], ["X-Ok", "1"]]})
        self.assertEqual(fmt.fields["headers"], (("X-Ok", "1"),))
        self.assert_invalid("http-response", {"headers": "A: b"}, "headers must be")
        self.assert_invalid("http-response", {"action": "explode"}, "action must be one of")

    def test_http_stream(self) -> None:
        self.assertEqual(self.fmt("http-stream", {"action": "close"}).action, "close")
        self.assertEqual(self.fmt("http-stream", {"content-bin": "eA=="}).content, b"x")
        fmt = self.fmt("http-stream", {"content": "x", "content-filters": ["var-subst"]})
        self.assertEqual(fmt.content_filters, ("var-subst",))
        close = self.fmt("http-stream", {"action": "close", "content": "x"})  # as Pushpin
        self.assertEqual((close.action, close.content), ("close", None))
        self.assert_invalid("http-stream", {"content": 5}, "content must be a string")
        self.assert_invalid("http-stream", {"content": "x", "content-filters": "var-subst"},
                            "content-filters")

    def test_ws_message(self) -> None:
        text = self.fmt("ws-message", {"content": "t"})
        self.assertEqual((text.content, text.fields["type"]), (b"t", "text"))
        binary = self.fmt("ws-message", {"content-bin": base64.b64encode(b"\xff").decode()})
        self.assertEqual((binary.content, binary.fields["type"]), (b"\xff", "binary"))
        ping = self.fmt("ws-message", {"type": "ping"})
        self.assertEqual((ping.content, ping.fields["type"]), (b"", "ping"))
        close = self.fmt("ws-message", {"action": "close", "code": 4000, "reason": "bye"})
        self.assertEqual((close.action, close.fields), ("close", {"code": 4000, "reason": "bye"}))

    def test_ws_message_errors(self) -> None:
        self.assert_invalid("ws-message", {"type": "text", "content-bin": "/w=="}, "UTF-8")
        self.assert_invalid("ws-message", {"type": "ping", "content": "x" * 126}, "125")
        self.assert_invalid("ws-message", {"type": "shout", "content": "x"}, "type must be")
        self.assert_invalid("ws-message", {"action": "close", "code": 999}, "code must be")
        self.assert_invalid("ws-message", {"action": "close", "reason": "r" * 124}, "123")
        self.assert_invalid("ws-message", {}, "content or content-bin is required")


class ParseItemsJsonTests(SynchronousTestCase):
    def assert_error(self, body: bytes, text: str) -> None:
        self.assertIn(text, str(self.assertRaises(PublishError, parse_items_json, body)))

    def test_items(self) -> None:
        body = json.dumps({"items": [{"channel": "a", "formats": STREAM},
                                     {"channel": "b", "formats": STREAM}]}).encode()
        self.assertEqual([i.channel for i in parse_items_json(body)], ["a", "b"])

    def test_errors(self) -> None:
        """Bad bodies get the SPEC A5 texts; one bad item rejects the whole request and
        names its index."""
        self.assert_error(b"{", "Body is not valid JSON.")
        self.assert_error(b"\xff\xfe", "Body is not valid JSON.")
        self.assert_error(b"[" * 100_000, "Body is not valid JSON.")
        self.assert_error(b"[]", "Body must be a JSON object.")
        self.assert_error(b"{}", "Invalid format: object does not contain 'items' list")
        self.assert_error(b'{"items": {}}', "object does not contain 'items' list")
        body = json.dumps({"items": [{"channel": "a", "formats": STREAM}, {"channel": "b"}]})
        self.assert_error(body.encode(), "item 1: item has no formats")


class DecodeMessageTests(SynchronousTestCase):
    ITEM = {"channel": "c", "formats": {"http-stream": {"content": "\u00e9"}}}

    def test_encodings(self) -> None:
        """tnetstring, T + tnetstring and J + JSON all decode to the same item."""
        raw = tnetstring.dumps(self.ITEM)
        for payload in (raw, b"T" + raw, b"J" + json.dumps(self.ITEM).encode()):
            item = parse_item(decode_message(payload))
            self.assertEqual(item.formats["http-stream"].content, "\u00e9".encode())
            self.assertEqual(item.channel, "c")

    def test_tnetstring_payload_fields_stay_binary(self) -> None:
        """In tnetstring, content/body are raw bytes (any bytes); other strings are text."""
        decoded = decode_message(tnetstring.dumps(
            {"channel": "c", "formats": {"http-stream": {"content": b"\xff\x00"}}}))
        self.assertEqual(decoded["formats"]["http-stream"]["content"], b"\xff\x00")
        self.assertEqual(decoded["channel"], "c")
        error = self.assertRaises(PublishError, decode_message, tnetstring.dumps({"id": b"\xff"}))
        self.assertIn("id is not UTF-8", str(error))

    def test_tnetstring_bin_fields(self) -> None:
        """As Pushpin, a tnetstring ws-message content-bin is the raw bytes (not refused as
        "not UTF-8"); http-stream/http-response take theirs as base64 text, as pubcontrol's
        ZeroMQ client sends them (Pushpin reads those from JSON only)."""
        item = parse_item(decode_message(tnetstring.dumps({"channel": "c", "formats": {
            "ws-message": {"content-bin": b"\xff\x00"},
            "http-stream": {"content-bin": b"/wA="},
            "http-response": {"body-bin": b"/wA="}}})))
        self.assertEqual({k: f.content for k, f in item.formats.items()},
                         dict.fromkeys(("ws-message", "http-stream", "http-response"),
                                       b"\xff\x00"))
        self.assertEqual(item.formats["ws-message"].fields["type"], "binary")
        error = self.assertRaises(PublishError, parse_item, decode_message(tnetstring.dumps(
            {"channel": "c", "formats": {"http-stream": {"content-bin": b"\xff"}}})))
        self.assertIn("content-bin is not valid base64", str(error))

    def test_errors(self) -> None:
        deep = b"0:]"
        for _ in range(600):
            deep = str(len(deep)).encode() + b":" + deep + b"]"
        for payload, text in (
            (b"", "not a valid tnetstring"),
            (b"Jnope", "not valid JSON"),
            (b"J" + b"[" * 100_000, "not valid JSON"),
            (b"T5:abc,", "not a valid tnetstring"),
            (deep, "nesting too deep"),
        ):
            self.assertIn(text, str(self.assertRaises(PublishError, decode_message, payload)))


# -- properties: arbitrary input never raises anything but PublishError ----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
format_names = st.sampled_from(sorted(PARSERS))


def items_shaped(payloads: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like items, so the format parsers are reached, with arbitrary field
    values (``payloads`` adds bytes for tnetstring)."""
    format_fields = st.dictionaries(
        st.sampled_from(["action", "code", "reason", "headers", "body", "body-bin", "content",
                         "content-bin", "type", "content-filters", "method", "path",
                         "subject", "thread", "payload", "from"]),
        json_values | payloads, max_size=5,
    )
    return st.fixed_dictionaries(
        {"channel": st.text(max_size=5) | json_values},
        optional={
            "id": json_values, "prev-id": json_values, "no-seq": json_values,
            "meta": json_values,
            "formats": st.dictionaries(format_names, format_fields | json_values, max_size=3)
            | json_values,
        },
    )


json_items = items_shaped(st.nothing())


class PropertyTests(SynchronousTestCase):
    def only_publish_errors(self, function: Any, *args: Any) -> None:
        with contextlib.suppress(PublishError):
            function(*args)

    @given(json_items | json_values)
    def test_parse_item(self, obj: Any) -> None:
        self.only_publish_errors(parse_item, obj)

    @given(st.binary() | json_values.map(lambda v: json.dumps({"items": [v]}).encode()))
    def test_parse_items_json(self, body: bytes) -> None:
        self.only_publish_errors(parse_items_json, body)

    @given(st.binary(max_size=200)
           | json_items.map(lambda v: b"J" + json.dumps(v).encode()))
    def test_decode_message(self, payload: bytes) -> None:
        self.only_publish_errors(lambda p: parse_item(decode_message(p)), payload)

    @given(items_shaped(st.binary(max_size=20)).map(tnetstring.dumps))
    def test_tnetstring_items(self, payload: bytes) -> None:
        self.only_publish_errors(lambda p: parse_item(decode_message(p)), payload)
