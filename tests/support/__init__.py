"""What the tests share, none of it a test: fakes that implement fanout_tx's interfaces
(``helpers``, ``ws_session``, ``origin_client``), waits with deadlines (``helpers``), real
external services started by PID (``services``, ``prosody``), real origins, proxies and
clients on loopback (``proxy_fixtures``, ``ws``, ``ops_fixtures``, ``twistd``, ``publish``,
``webhooks``) and the churn tests' subprocesses (``churn_origin``, ``churn_client``)."""
