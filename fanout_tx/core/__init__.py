"""The pure core every item passes through: the item model (``items``), the publish
formats (``formats/``), the ``Router`` that fans an item out to subscribers, the local bus,
the zope interfaces at the real seams (subscriber, bus, router observer), header rules and
the wire codecs (``codecs/``).

No reactor, no sockets. May import ``grip``, ``config`` and ``fanout_tx._twisted``; never an
input, a transport, ``outbound``, ``cluster`` or ``ops`` (checked by import-linter).
"""
