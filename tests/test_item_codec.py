"""The item wire codec round-trips every Item exactly and refuses anything else cleanly."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.codecs.item_codec import ItemCodecError, decode_items, encode_items
from fanout_tx.core.formats import Format
from fanout_tx.core.items import Item, decode_message, parse_item, parse_items_json

_scalars = (st.none() | st.booleans() | st.integers() | st.text()
            | st.floats(allow_nan=False, allow_infinity=False) | st.binary())
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text() | st.integers(), inner, max_size=4)),
    max_leaves=12,
)
_formats = st.builds(
    Format,
    name=st.text(min_size=1), action=st.sampled_from(["send", "close", "hint"]),
    content=st.none() | st.binary(),
    fields=st.dictionaries(st.text(), _values, max_size=4),
    content_filters=st.lists(st.text(), max_size=2).map(tuple),
)
_items = st.builds(
    Item,
    channel=st.text(min_size=1),
    formats=st.dictionaries(st.text(min_size=1), _formats, min_size=1, max_size=3),
    id=st.none() | st.text(), prev_id=st.none() | st.text(), no_seq=st.booleans(),
    meta=st.dictionaries(st.text(), st.text(), max_size=3), share_key=st.none() | st.text(),
)


class ItemCodecTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(st.lists(_items, max_size=3))
    def test_round_trip(self, items: list[Item]) -> None:
        """Any batch of Items, with bytes, tuples and nested mappings in their fields,
        decodes to equal Items (tuples stay tuples, bytes stay bytes)."""
        self.assertEqual(decode_items(encode_items(items)), items)

    def test_lone_surrogates_refused(self) -> None:
        """No input lets lone surrogates in; an entry holding one (written by an older
        instance) is refused whole, never delivered as text that cannot be encoded."""
        item = Item("c", {"f": Format("f", fields={"k": "\udfff"})})
        error = self.assertRaises(ItemCodecError, decode_items, encode_items([item]))
        self.assertIn("lone surrogate (\\udfff)", str(error))

    def test_parsed_items_round_trip(self) -> None:
        """Items as the publish parsers make them (every registered format) round-trip."""
        items = parse_items_json(json.dumps({"items": [
            {"channel": "c", "id": "2", "prev-id": "1", "meta": {"sender": "u"},
             "formats": {
                 "http-response": {"code": 201, "headers": [["X-A", "1"], ["X-A", "2"]],
                                   "body-bin": "AAEC"},
                 "http-stream": {"content": "caf\u00e9", "content-filters": ["var-subst"]},
                 "ws-message": {"action": "close", "code": 4000, "reason": "bye"},
             }},
            {"channel": "d", "no-seq": True, "http-stream": {"action": "close"}},
            {"channel": "e", "formats": {
                "http-request": {"method": "PUT", "path": "/x?y=1", "body": "b"},
                "xmpp-message": {"body": "hi", "type": "headline", "from": "bot"},
                "xmpp-stanza": {"content": "<message><body>x</body></message>"},
            }},
        ]}).encode())
        decoded = decode_items(encode_items(items))
        self.assertEqual(decoded, items)
        self.assertEqual(decoded[0].formats["http-response"].fields["headers"],
                         (("X-A", "1"), ("X-A", "2")))

    def test_raw_binary_from_tnetstring_round_trips(self) -> None:
        """A ws-message whose tnetstring content-bin held raw bytes reaches the other
        instances (the Redis wire form) as the same bytes."""
        [item] = [parse_item(decode_message(tnetstring.dumps({"channel": "c", "formats": {
            "ws-message": {"content-bin": b"\x00\xff\xfe"}}})))]
        [decoded] = decode_items(encode_items([item]))
        self.assertEqual(decoded.formats["ws-message"].content, b"\x00\xff\xfe")
        self.assertEqual(decoded, item)

    def test_unsupported_values_are_refused(self) -> None:
        """A field value with no wire form (a set, NaN) is an ItemCodecError, not a crash."""
        for value in ({1, 2}, float("nan")):
            item = Item("c", {"f": Format("f", fields={"v": value})})
            with self.assertRaises(ItemCodecError):
                encode_items([item])

    def test_malformed_payloads_are_refused(self) -> None:
        """Payloads that are not a version-1 batch raise ItemCodecError naming the problem."""
        for payload in (b"not json", b"[]", b'{"v": 2, "items": []}', b'{"v": 1}',
                        b'{"v": 1, "items": [{"channel": "c"}]}',
                        b'{"v": 1, "items": [{"channel": 1, "id": null, "prev-id": null,'
                        b' "no-seq": false, "meta": {}, "formats": []}]}',
                        b'{"v": 1, "items": [{"channel": "c", "id": null, "prev-id": null,'
                        b' "no-seq": false, "meta": {}, "formats": [["f", "f", "send", "!",'
                        b' {"m": []}, []]]}]}'):
            with self.assertRaises(ItemCodecError):
                decode_items(payload)

    @settings(max_examples=100, deadline=None)
    @given(st.recursive(_scalars.filter(lambda v: not isinstance(v, bytes)),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(), inner, max_size=3), max_leaves=10))
    def test_arbitrary_json_only_raises_codec_error(self, document: object) -> None:
        """Whatever JSON arrives, decoding gives Items or ItemCodecError, nothing else."""
        payload = json.dumps({"v": 1, "items": [document]}).encode()
        try:
            items = decode_items(payload)
        except ItemCodecError:
            return
        self.assertTrue(all(isinstance(item, Item) for item in items))
