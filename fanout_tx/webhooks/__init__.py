"""Webhooks transport (SPEC B2): subscriptions registered over the publish API get each
``http-request`` item as a signed, retried, SSRF-checked outbound HTTP request."""
