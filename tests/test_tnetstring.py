"""The tnetstring codec: known encodings, round trips and precise errors."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.codecs import tnetstring
from fanout_tx.core.codecs.tnetstring import TnetstringError

# What loads returns: strings come back as bytes, so round trips use bytes.
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(), inner, max_size=5),
    max_leaves=20,
)


class EncodingTests(SynchronousTestCase):
    def test_known_encodings(self) -> None:
        """Each type has its tag, as in the tnetstring spec Pushpin uses."""
        for value, encoded in (
            (b"abc", b"3:abc,"),
            ("\u00e9", b"2:\xc3\xa9,"),
            (12, b"2:12#"),
            (-1, b"2:-1#"),
            (1.5, b"3:1.5^"),
            (True, b"4:true!"),
            (False, b"5:false!"),
            (None, b"0:~"),
            ([1, b"a"], b"8:1:1#1:a,]"),
            ({b"k": b"v"}, b"8:1:k,1:v,}"),
            ((), b"0:]"),
        ):
            self.assertEqual(tnetstring.dumps(value), encoded)

    def test_unencodable(self) -> None:
        self.assertRaises(TypeError, tnetstring.dumps, object())

    def test_decoding(self) -> None:
        self.assertEqual(tnetstring.loads(b"8:1:k,1:v,}"), {b"k": b"v"})
        self.assertEqual(tnetstring.loads(b"0:,"), b"")
        self.assertEqual(tnetstring.loads(b"0:}"), {})


class ErrorTests(SynchronousTestCase):
    def assert_error(self, data: bytes, text: str) -> None:
        error = self.assertRaises(TnetstringError, tnetstring.loads, data)
        self.assertIn(text, str(error))

    def test_errors(self) -> None:
        """Each malformation is a TnetstringError (its text is tnetstring3's)."""
        for bad in (b"", b"abc", b":abc,", b"1234567890:x,", b"5:abc,", b"3:abc", b"1:x#",
                    b"1:x^", b"3:yes!", b"1:x~", b"3:abc?", b"4:1:1#}", b"4:1:k,}", b"5:3:ab,]",
                    b"03:abc,", b"3: 12#"):
            self.assertRaises(TnetstringError, tnetstring.loads, bad)
        self.assert_error(b"3:abc,x", "trailing data")

    def test_loads_returns_bytes(self) -> None:
        """Strings come back as bytes, never decoded: Pushpin bodies are binary."""
        self.assertEqual(tnetstring.loads(b"2:\xc3\xa9,"), b"\xc3\xa9")
        self.assertEqual(tnetstring.loads(b"1:\xff,"), b"\xff")
        self.assertEqual(tnetstring.dumps({"k": ("v", 1)}), b"15:1:k,8:1:v,1:1#]}")

    def test_deep_nesting(self) -> None:
        """Nesting deeper than the interpreter's stack is an error, not a crash."""
        data = b"0:]"
        for _ in range(5000):
            data = str(len(data)).encode() + b":" + data + b"]"
        self.assert_error(data, "nesting too deep")


class PropertyTests(SynchronousTestCase):
    @given(values)
    def test_round_trip(self, value: Any) -> None:
        self.assertEqual(tnetstring.loads(tnetstring.dumps(value)), value)

    @given(st.binary(max_size=100))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any input decodes or raises TnetstringError, nothing else."""
        with contextlib.suppress(TnetstringError):
            tnetstring.loads(data)

    @given(values.map(tnetstring.dumps), st.data())
    def test_truncated_encodings_are_rejected(self, encoded: bytes, data: st.DataObject
                                              ) -> None:
        """A strict prefix of a valid encoding never decodes."""
        cut = data.draw(st.integers(0, len(encoded) - 1))
        self.assertRaises(TnetstringError, tnetstring.loads, encoded[:cut])
