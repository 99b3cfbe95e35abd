"""Running the server: ``/health``, ``/metrics``, the stats socket (``stats_pub``),
start-up that fails loudly (``startup``), the graceful stop (``operations``), log levels
(``logs``), process and client limits (``fd_limit``, ``deadlines``), GC policy and start-up
warnings. May import anything but ``tap``.
"""
