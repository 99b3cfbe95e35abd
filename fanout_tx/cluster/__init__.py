"""Several instances as one: the Redis connection (``redis_link``) and the bus that
shares every publish through a Redis stream (``redis_bus``). May import ``core`` and
``config``; never an input or a transport (checked by import-linter).
"""
