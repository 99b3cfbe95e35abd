"""Where published items come in: the HTTP publish API (``publish_api``, with its
``publish_auth``), ZeroMQ PULL/SUB (``zmq_ingest``), the ZeroMQ command socket
(``zmq_command``) and ZeroMQ binding as Pushpin does it (``zmq_bind``).

Each input parses into ``core`` items and hands them to a bus. May import ``core``, ``grip``,
``config`` and ``ops``; never a transport (checked by import-linter).
"""
