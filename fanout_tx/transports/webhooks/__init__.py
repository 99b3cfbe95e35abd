"""The webhooks transport (SPEC B2): subscriptions registered over the
publish port (``api``, the subscription API, mounted there by tap.py) get each
``http-request`` item as a signed, retried, SSRF-checked outbound HTTP request. The
subscription API lives here, not in ``inputs``: it registers this transport's subscribers,
as the proxy registers held requests. Never imports another transport.
"""
