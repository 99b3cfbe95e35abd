"""What the tests share, none of it a test: fakes that implement fanout_tx's interfaces
(``helpers``), real external services started by PID (``services``, ``prosody``), real
origins, proxies and clients on loopback (``proxy_fixtures``, ``ws``, ``origin_client``,
``ops_fixtures``, ``twistd``, ``publish``, ``webhooks``) and the churn tests' subprocesses."""
