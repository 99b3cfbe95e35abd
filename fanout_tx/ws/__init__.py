"""WebSocket transports: WebSocket-over-HTTP and WebSocket proxying (SPEC A7)."""
