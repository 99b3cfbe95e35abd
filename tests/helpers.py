"""Fakes shared by the tests, each implementing a real interface (checked with verifyObject)."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from fanout_tx.formats import Format
from fanout_tx.interfaces import ISubscriber
from fanout_tx.items import Item


@implementer(ISubscriber)
class RecordingSubscriber:
    """Records every delivery: (item, fmt, prepared) tuples in ``received``."""

    def __init__(self, formats: tuple[str, ...] = ("http-stream",),
                 meta: dict[str, str] | None = None, fail: bool = False) -> None:
        self.formats = formats
        self.meta = meta or {}
        self.fail = fail
        self.received: list[tuple[Item, Format, Any]] = []
        self.closed: list[str] = []
        self.recovered = 0

    def deliver(self, item: Item, fmt: Format, prepared: Any) -> None:
        if self.fail:
            raise RuntimeError("subscriber failure on purpose")
        self.received.append((item, fmt, prepared))

    def close(self, reason: str) -> None:
        self.closed.append(reason)

    def recover(self) -> None:
        self.recovered += 1

    @property
    def contents(self) -> list[bytes | None]:
        return [fmt.content for _item, fmt, _prepared in self.received]
