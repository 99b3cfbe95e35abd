"""json_input.loads: every malformed input, nesting too deep included, is a ValueError."""

from __future__ import annotations

import base64
import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.codecs.json_input import LoneSurrogateError, loads
from fanout_tx.grip.signature import SignatureError, verify_hs256


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class LoadsTests(SynchronousTestCase):
    def test_values_and_errors(self) -> None:
        self.assertEqual(loads(b'{"a": [1]}'), {"a": [1]})
        for bad in (b"{", b"\xff\xfe", b"[" * 100_000, "[" * 100_000):
            self.assertRaises(ValueError, loads, bad)

    def test_lone_surrogates_refused(self) -> None:
        """A lone surrogate (as an escape, as UTF-8-encoded bytes, in UTF-16 input, in a key,
        deep inside) is a LoneSurrogateError naming it; a valid pair and an escaped
        backslash are text."""
        for bad in (b'{"a": "\\ud800"}', b'{"\\uDC00x": 1}', '["\\udbff"]',
                    b'"\xed\xa0\x80"', '"\ud800"'.encode("utf-16", "surrogatepass"),
                    b"[" * 50 + b'"\\ud800"' + b"]" * 50):
            error = self.assertRaises(LoneSurrogateError, loads, bad)
            self.assertIn("lone surrogate", str(error))
        self.assertEqual(loads(b'["\\ud83d\\ude00", "\\\\ud800"]'), ["\U0001f600", "\\ud800"])

    def test_deep_token_is_a_signature_error(self) -> None:
        """A bearer token or Grip-Sig whose claims nest too deep is refused like any
        malformed token, not raised as a RecursionError into the request."""
        signing_input = ".".join((_b64url(b'{"alg":"HS256","typ":"JWT"}'),
                                  _b64url(b"[" * 50_000)))
        signature = hmac.new(b"key", signing_input.encode("ascii"), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64url(signature)}"
        error = self.assertRaises(SignatureError, verify_hs256, token, b"key", 0.0)
        self.assertEqual(str(error), "token is not valid JSON")
        header = ".".join((_b64url(b"[" * 50_000), _b64url(b"{}"), "sig"))
        error = self.assertRaises(SignatureError, verify_hs256, header, b"key", 0.0)
        self.assertEqual(str(error), "token is not valid JSON")
