#!/bin/bash
# fanout_tx with `[runner] workers = 1`, for bench/run.sh's scaling line (issue 15): the same
# server as fanout_tx.sh, one process.
FANOUT_WORKERS=1 exec bash "$(dirname "$0")/fanout_tx.sh" "$@"
