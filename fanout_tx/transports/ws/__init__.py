"""The WebSocket transport: WebSocket-over-HTTP and WebSocket proxying (SPEC A7).
Never imports another transport.
"""
