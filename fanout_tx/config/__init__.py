"""Configuration: ``fanout.conf`` read into frozen settings (``settings``), the routes
file (``routes``) and its watcher (``routes_watch``), Redis URLs (``redis_url``).

Pure parsing, plus the watcher's timer. May import ``core`` and ``grip``; never an input, a
transport, ``outbound``, ``cluster`` or ``ops`` (checked by import-linter, setup.cfg).
"""
