"""GRIP, pure: the instructions an origin answers with (``instruct``), ``Grip-Sig``
and publish-token signatures (``signature``), content filters (``content_filters``) and
their directives. May import ``core`` and ``config``; never an input, a transport,
``outbound``, ``cluster`` or ``ops`` (checked by import-linter).
"""
