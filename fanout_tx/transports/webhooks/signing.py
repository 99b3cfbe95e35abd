"""Standard Webhooks signing: secrets, message ids and the ``webhook-*`` headers (SPEC B2)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


class SecretError(ValueError):
    """A subscription secret is not ``whsec_`` followed by base64."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after ``whsec_``."""
    if not secret.startswith(SECRET_PREFIX):
        raise SecretError("secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("secret must be whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise SecretError("secret key must be 24 to 64 bytes (Standard Webhooks)")
    return key


def message_id(subscription_id: str, channel: str, item_id: str | None,
               share_key: str | None = None) -> str:
    """``webhook-id``: derived from the item id when there is one, so a publisher's retry of
    the same item gets the same id (receivers dedupe on it); else from the item's share key
    (Redis), so every instance derives the same one; random otherwise."""
    if item_id is not None:
        name = f"{subscription_id}\0{channel}\0{item_id}"
    elif share_key is not None:
        name = f"{subscription_id}\0{channel}\0\0{share_key}"
    else:
        return "msg_" + secrets.token_urlsafe(18)
    digest = hashlib.sha256(name.encode()).digest()
    return "msg_" + base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> list[tuple[str, str]]:
    """The three headers every attempt carries; the timestamp is the attempt's own."""
    return [
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature(key, msg_id, timestamp, body)),
    ]
