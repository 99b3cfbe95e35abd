"""HS256 JWTs: ``Grip-Sig`` for origin requests and Bearer tokens on the publish API.

PyJWT parses and signs; it is held to HS256 only (``alg: none``, RS256 and every other
algorithm are refused) and to a required ``exp``. The expiry itself is checked here against
the caller's clock (the reactor's), which PyJWT cannot be given: it reads the wall clock.
"""

from __future__ import annotations

import warnings
from typing import Any

import jwt

_ALGORITHMS = ["HS256"]

# A short key is the operator's choice (Pushpin's default is "changeme"): PyJWT would warn on
# every token signed or checked with one.
if hasattr(jwt.warnings, "InsecureKeyLengthWarning"):
    warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


class SignatureError(ValueError):
    """A token is malformed, badly signed, expired or from the wrong issuer."""


def encode_hs256(claims: dict[str, Any], key: bytes) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def grip_sig(iss: str, key: bytes, now: float) -> str:
    """The ``Grip-Sig`` value: claims exactly ``iss`` and ``exp`` one hour ahead."""
    return encode_hs256({"iss": iss, "exp": int(now) + 3600}, key)


def verify_hs256(
    token: str, key: bytes, now: float, iss: str | None = None, leeway: float = 30.0,
    require_exp: bool = True,
) -> dict[str, Any]:
    """Check an HS256 token and return its claims, or raise SignatureError with the reason."""
    try:
        # exp is checked below, with the caller's clock (PyJWT's would be the wall clock);
        # nbf, iat, aud, sub and jti are not GRIP's and are ignored, as Pushpin does.
        claims: dict[str, Any] = jwt.decode(
            token.strip(), key, algorithms=_ALGORITHMS, issuer=iss,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_aud": False, "verify_sub": False, "verify_jti": False,
                     "require": ["exp"] if require_exp else []})
    except RecursionError:  # json.loads on a header or claims nested too deep
        raise SignatureError("token is not valid JSON") from None
    except jwt.InvalidSignatureError:
        raise SignatureError("invalid signature") from None
    except jwt.InvalidAlgorithmError:
        raise SignatureError("token algorithm must be HS256") from None
    except jwt.MissingRequiredClaimError as e:
        raise SignatureError("token has no exp claim" if e.claim == "exp" else "wrong issuer") \
            from None
    except jwt.InvalidIssuerError:
        raise SignatureError("wrong issuer") from None
    except jwt.DecodeError as e:
        json = str(e).startswith(("Invalid header string", "Invalid payload string"))
        raise SignatureError("token is not valid JSON" if json else "token is not a JWT") \
            from None
    except jwt.PyJWTError as e:  # e.g. an HMAC key PyJWT will not use (a PEM public key)
        raise SignatureError(f"token refused: {e}") from None
    exp = claims.get("exp")
    if exp is None:
        if require_exp:
            raise SignatureError("token has no exp claim")
    elif not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise SignatureError("exp claim must be a number")
    elif now > exp + leeway:
        raise SignatureError("token has expired")
    return claims
