"""grip/signature.py: HS256 only, exp required and checked against the caller's clock with a
leeway, issuer checked; every refusal a SignatureError with a reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.grip.signature import SignatureError, encode_hs256, grip_sig, verify_hs256

KEY = b"grip-key"
NOW = 1_800_000_000.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hand_signed(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    """A token whose header says whatever the test wants, HMAC-SHA256-signed with ``key``."""
    signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


class VerifyTests(SynchronousTestCase):
    def refused(self, token: str, reason: str, **kwargs: object) -> None:
        error = self.assertRaises(SignatureError, verify_hs256, token, KEY, NOW, **kwargs)
        self.assertEqual(str(error), reason)

    def test_valid_and_round_trip(self) -> None:
        """Claims come back; the Grip-Sig has exactly iss and an exp one hour ahead."""
        claims = verify_hs256(grip_sig("fanout", KEY, NOW), KEY, NOW, iss="fanout")
        self.assertEqual(claims, {"iss": "fanout", "exp": int(NOW) + 3600})
        header = json.loads(base64.urlsafe_b64decode(grip_sig("x", KEY, NOW).split(".")[0]
                                                     + "=="))
        self.assertEqual(header, {"alg": "HS256", "typ": "JWT"})

    def test_expiry_with_leeway_on_the_callers_clock(self) -> None:
        token = encode_hs256({"exp": int(NOW) - 30}, KEY)
        self.assertEqual(verify_hs256(token, KEY, NOW)["exp"], int(NOW) - 30)
        self.refused(token, "token has expired", leeway=0)
        self.refused(encode_hs256({"exp": int(NOW) - 31}, KEY), "token has expired")
        # A wall-clock check would call this expired: the caller's clock is what counts.
        self.assertTrue(verify_hs256(encode_hs256({"exp": 100}, KEY), KEY, 50.0, leeway=0))

    def test_missing_or_bad_exp_refused(self) -> None:
        self.refused(encode_hs256({"iss": "a"}, KEY), "token has no exp claim")
        self.refused(encode_hs256({"exp": None}, KEY), "token has no exp claim")
        self.refused(encode_hs256({"exp": "soon"}, KEY), "exp claim must be a number")
        self.refused(encode_hs256({"exp": True}, KEY), "exp claim must be a number")
        self.assertEqual(verify_hs256(encode_hs256({}, KEY), KEY, NOW, require_exp=False), {})

    def test_issuer(self) -> None:
        token = encode_hs256({"iss": "a", "exp": int(NOW) + 60}, KEY)
        self.assertEqual(verify_hs256(token, KEY, NOW, iss="a")["iss"], "a")
        self.refused(token, "wrong issuer", iss="b")
        self.refused(encode_hs256({"exp": int(NOW) + 60}, KEY), "wrong issuer", iss="a")

    def test_alg_none_refused(self) -> None:
        """An unsigned token (``alg: none``, empty signature) is never accepted."""
        claims = _b64url(json.dumps({"exp": int(NOW) + 60}).encode())
        for alg in ("none", "None", "NONE"):
            header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
            self.refused(f"{header}.{claims}.", "token algorithm must be HS256")

    def test_other_algorithms_refused(self) -> None:
        """HS384/HS512 tokens signed with the right key, a real RS256 token, and an RS256
        header over an HMAC of our key (the algorithm-confusion attack) are all refused."""
        claims = {"exp": int(NOW) + 60}
        for alg in ("HS384", "HS512"):
            self.refused(jwt.encode(claims, KEY, algorithm=alg), "token algorithm must be HS256")
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.refused(jwt.encode(claims, private, algorithm="RS256"),
                     "token algorithm must be HS256")
        self.refused(_hand_signed({"alg": "RS256", "typ": "JWT"}, claims, KEY),
                     "token algorithm must be HS256")
        self.refused(_hand_signed({"typ": "JWT"}, claims, KEY), "token algorithm must be HS256")

    def test_malformed_and_badly_signed(self) -> None:
        good = encode_hs256({"exp": int(NOW) + 60}, KEY)
        self.refused("nonsense", "token is not a JWT")
        self.refused(good + "x", "invalid signature")
        self.refused(encode_hs256({"exp": int(NOW) + 60}, b"other"), "invalid signature")
        self.refused("e30.!!!.x", "token is not a JWT")
        header = _b64url(b"not json")
        self.refused(f"{header}.e30.x", "token is not valid JSON")
        self.refused(_hand_signed({"alg": "HS256"}, [1], KEY), "token is not valid JSON")
        self.assertEqual(verify_hs256(f"  {good}\n", KEY, NOW)["exp"], int(NOW) + 60)
