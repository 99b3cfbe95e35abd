"""Where items go out to subscribers, one package per kind of client: ``http/`` (the
GRIP proxy, held responses and streams), ``ws/`` (WebSocket-over-HTTP and WebSocket
proxying), ``xmpp/`` (an XMPP component), ``webhooks/`` (signed HTTP deliveries, and the
subscription API that registers them). Each registers its subscribers with the core router.

The modules at this level are what every transport shares: answering a client request
(``responses``, ``cors``), write coalescing (``write_batch``) and the cap on bytes queued for
slow readers (``write_budget``). A transport may import these, ``core``, ``grip``,
``config``, ``outbound`` and ``ops``; transports never import each other (checked by
import-linter).
"""
