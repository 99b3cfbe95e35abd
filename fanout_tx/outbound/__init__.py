"""Talking to origins: the one HTTP/1.1 origin client (``origin_client``), origin
endpoints, request headers and body relays (``origin``), request body producers (``body``)
and socket options (``tcp_options``).

Used by the transports; may import ``core``, ``grip`` and ``config``, never an input or a
transport (checked by import-linter).
"""
