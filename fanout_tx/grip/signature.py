"""Pure HS256 JWTs: ``Grip-Sig`` for origin requests and Bearer tokens on the publish API.

Small enough to own rather than depend on a JWT library: HS256 only, which is all GRIP uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from fanout_tx.json_input import loads


class SignatureError(ValueError):
    """A token is malformed, badly signed, expired or from the wrong issuer."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("token is not base64url") from None


_HEADER = _b64url(b'{"alg":"HS256","typ":"JWT"}')


def encode_hs256(claims: dict[str, Any], key: bytes) -> str:
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signing_input = f"{_HEADER}.{payload}".encode("ascii")
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{_HEADER}.{payload}.{_b64url(signature)}"


def grip_sig(iss: str, key: bytes, now: float) -> str:
    """The ``Grip-Sig`` value: claims exactly ``iss`` and ``exp`` one hour ahead."""
    return encode_hs256({"iss": iss, "exp": int(now) + 3600}, key)


def verify_hs256(
    token: str, key: bytes, now: float, iss: str | None = None, leeway: float = 30.0,
    require_exp: bool = True,
) -> dict[str, Any]:
    """Check an HS256 token and return its claims, or raise SignatureError with the reason."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise SignatureError("token is not a JWT")
    try:
        header = loads(_unb64url(parts[0]))
        claims = loads(_unb64url(parts[1]))
    except ValueError:
        raise SignatureError("token is not valid JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise SignatureError("token algorithm must be HS256")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64url(parts[2])):
        raise SignatureError("invalid signature")
    if not isinstance(claims, dict):
        raise SignatureError("claims must be an object")
    exp = claims.get("exp")
    if exp is None:
        if require_exp:
            raise SignatureError("token has no exp claim")
    elif not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise SignatureError("exp claim must be a number")
    elif now > exp + leeway:
        raise SignatureError("token has expired")
    if iss is not None and claims.get("iss") != iss:
        raise SignatureError("wrong issuer")
    return claims
