"""Lets wokkel 18.0.0 import on current Twisted.

wokkel 18 still imports ``twisted.python.compat._PY3`` (plus ``unicode``/``iteritems`` from
there) and ``twisted.python.constants``, which Twisted has dropped. ``install()`` puts back
exactly those names, from their modern equivalents, before wokkel is imported; it changes
nothing that already exists, so it is safe to call more than once.
"""

from __future__ import annotations

import sys

import twisted.python.compat as compat


def install() -> None:
    for name, value in (
        ("_PY3", True),
        ("unicode", str),
        ("iteritems", lambda d: iter(d.items())),
        ("itervalues", lambda d: iter(d.values())),
    ):
        if not hasattr(compat, name):
            setattr(compat, name, value)
    if "twisted.python.constants" not in sys.modules:
        try:
            import twisted.python.constants  # noqa: F401
        except ImportError:
            import constantly

            sys.modules["twisted.python.constants"] = constantly
