"""Pure parsing of ``[redis] url``: ``redis://[[user]:password@]host[:port][/db]`` or
``unix://[[user]:password@]/path/redis.sock[?db=N]`` -> RedisAddress, or ValueError.

Kept apart from the connection code so config loading can reject a bad URL at start-up
with the file and line, before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is: a TCP host and port, or a unix socket path; plus db and credentials."""

    host: str | None = None
    port: int = DEFAULT_PORT
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """For logs: the address without credentials."""
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{where}/{self.db}"


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"database must be a number, got {text!r}")
    return int(text)


def parse_redis_url(url: str) -> RedisAddress:
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"expected unix:///path/to/redis.sock, got {url!r}")
        db = _db(query["db"][0]) if "db" in query else 0
        return RedisAddress(path=unquote(parts.path), db=db, username=username,
                            password=password)
    if parts.scheme == "redis":
        if not parts.hostname:
            raise ValueError(f"expected redis://host:port/db, got {url!r}")
        db_text = parts.path.strip("/")
        db = _db(db_text) if db_text else 0
        return RedisAddress(host=parts.hostname, port=port or DEFAULT_PORT, db=db,
                            username=username, password=password)
    raise ValueError(f"expected redis://host:port/db or unix:///path, got {url!r}")
