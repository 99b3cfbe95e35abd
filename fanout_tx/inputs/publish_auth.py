"""Bearer-JWT auth for the publish port (SPEC A5, differs: Pushpin's publish API has none).

What PyPI ``gripcontrol`` sends with ``control_iss``/``key``: ``Authorization: Bearer <JWT>``,
HS256, ``iss`` and ``exp`` claims. With ``key`` alone (as Fastly Fanout's clients are set up)
the libraries send ``Authorization: Bearer <key>``: the key itself is accepted too.
"""

from __future__ import annotations

import hmac

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from fanout_tx.grip.signature import SignatureError, verify_hs256

# Clock skew tolerated on ``exp`` between the publisher and this server.
LEEWAY_SECONDS = 30.0


class BearerAuth:
    """Decides whether a request carries a valid token; an empty key turns auth off."""

    def __init__(self, key: bytes, iss: str, clock: IReactorTime) -> None:
        self._key = key
        self._iss = iss or None
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    def refusal(self, request: IRequest) -> str | None:
        """``None`` when the request may pass, else the one-line reason for the 401."""
        if not self._key:
            return None
        header = request.getHeader(b"authorization")
        if header is None:
            return "Authorization required: send a Bearer token."
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Authorization must be a Bearer token."
        if hmac.compare_digest(token.encode("latin-1"), self._key):
            return None
        try:
            verify_hs256(token, self._key, self._clock.seconds(), iss=self._iss,
                         leeway=LEEWAY_SECONDS)
        except SignatureError as e:
            return f"Invalid token: {e}."
        return None
