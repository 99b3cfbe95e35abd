"""fanout_tx: a GRIP push server on Twisted, a drop-in for Pushpin on the wire."""

__version__ = "0.1.0"
