#!/bin/bash
# Start a private fanout_tx for ../shared/bench (the load harness) and print its PID.
#
#   bench/targets/fanout_tx.sh [ORIGIN_PORT]      (default 28100)
#
# Same ports as the harness's pushpin target (all 127.0.0.1): proxy 27999, ZMQ PULL 25560,
# HTTP publish 25561, ZMQ SUB 25562; every path routed to the harness origin, WebSocket
# requests as WebSocket-over-HTTP. Config and log live in $BENCH_TMP (default
# /tmp/bench-fanout_tx). The twistd used is $FANOUT_TWISTD, else the repo's .venv, else PATH.
# [runner] workers is $FANOUT_WORKERS (default auto: one per core).
set -euo pipefail
ORIGIN_PORT=${1:-${ORIGIN_PORT:-28100}}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T=${BENCH_TMP:-/tmp/bench-fanout_tx}
mkdir -p "$T"
TWISTD=${FANOUT_TWISTD:-}
if [ -z "$TWISTD" ]; then
  if [ -x "$REPO/.venv/bin/twistd" ]; then TWISTD="$REPO/.venv/bin/twistd"; else TWISTD=$(command -v twistd); fi
fi

echo "* 127.0.0.1:${ORIGIN_PORT},over_http" > "$T/routes"
cat > "$T/fanout.conf" <<CONF
[runner]
http_port=127.0.0.1:27999
client_maxconn=50000
log_level=${FANOUT_LOG_LEVEL:-2}
# a supervisor and one worker per core (the harness measures the whole process tree)
workers=${FANOUT_WORKERS:-auto}

[proxy]
routesfile=$T/routes
sig_iss=pushpin
sig_key=changeme

[handler]
push_in_spec=tcp://127.0.0.1:25560
push_in_sub_specs=tcp://127.0.0.1:25562
push_in_http_addr=127.0.0.1
push_in_http_port=25561
message_wait=5000
id_cache_ttl=60

[webhooks]
enabled=false
CONF

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Bench this checkout's code, not whatever copy of fanout_tx the venv was installed with.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$T"
setsid "$TWISTD" -n --pidfile= --logfile="$T/fanout.log" fanout --config "$T/fanout.conf" \
  > "$T/runner.out" 2>&1 < /dev/null &
PID=$!
for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/27999) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/25561) 2>/dev/null; then
    break
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "fanout_tx exited; see $T" >&2; cat "$T/runner.out" "$T/fanout.log" >&2 || true; exit 1
  fi
  sleep 0.1
done
echo "$PID"
