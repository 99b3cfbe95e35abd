"""The HTTP transport: the GRIP reverse proxy (``proxy``), held responses
and streams (``hold``), request bodies (``upload``), JSON-P (``jsonp``), TLS on the client
port (``tls``), the connection cap (``conn_limit``) and the service that builds it all
(``proxy_service``). Never imports another transport.
"""
