"""JSON from outside the process: one parse whose every failure is a ValueError.

``json.loads`` raises RecursionError, not ValueError, for input nested too deep (a few
thousand ``[``); each caller would otherwise have to remember it, and one that forgot
answered such input with a 500 or a traceback.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes) -> Any:
    """``json.loads``; ValueError for anything malformed, nesting too deep included."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
