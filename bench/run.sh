#!/bin/bash
# fanout_tx beside Pushpin, in one command: regenerates bench/RESULTS.md.
#
#   bench/run.sh [bench.py run options]       e.g. bench/run.sh --scenarios fanout,ws
#   bench/run.sh churn [bench.py run options] one fanout_tx, the hold scenario 10 times (#19)
#
# Runs the shared load harness (../shared/bench: C epoll subscribers, C origin, wrk) against
# bench/targets/fanout_tx.sh and against Debian's pushpin, REPEAT times each (default 2),
# alternating fanout_tx, pushpin, fanout_tx, pushpin so that a burst of load from elsewhere
# on the machine hits both; then fanout_tx with `workers = 1` (hold, passthrough) for the
# scaling line. Every run starts a fresh server. Raw results go to
# bench-results/<stamp>/ (gitignored); bench/RESULTS.md gets the medians side by side, the
# issue's targets as ratios, the machine and the load average around the runs.
#
# Environment:
#   REPEAT          runs per target (default 2)
#   BENCH_HARNESS   the shared bench folder (default: ../shared/bench beside the repository)
#   PYTHON          Python with pyzmq for the harness, and whose twistd runs fanout_tx
#                   (default: the repository's .venv/bin/python, else python3)
#   FANOUT_TWISTD   twistd that runs fanout_tx (default: twistd beside $PYTHON)
#   RESULTS_MD      where to write the report (default: bench/RESULTS.md)
#   SCALING         1 (default): also run targets/fanout_tx_1worker.sh (hold, passthrough)
#                   for RESULTS.md's scaling line, workers = auto over workers = 1; 0: don't
#   CHURN_N, CHURN_CYCLES   churn: streams held per cycle (default 10000), cycles (default 10)
#
# churn: ONE fanout_tx instance (no Pushpin), N HTTP streams opened, held and closed, CYCLES
# times over (the harness's --repeat keeps the server up between repeats); prints the RSS with
# N held and the conns/s per cycle, and whether memory stays flat (bench/churn_report.py).
# Takes about 3 minutes per run and target (6 scenarios); the machine should be otherwise idle.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${BENCH_HARNESS:-$REPO/../shared/bench}
[ -x "$HARNESS/run.sh" ] || [ -f "$HARNESS/run.sh" ] || {
  echo "no load harness at $HARNESS (set BENCH_HARNESS)" >&2; exit 2; }
HARNESS=$(cd "$HARNESS" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON
if [ -z "${FANOUT_TWISTD:-}" ] && [ -x "$(dirname "$PYTHON")/twistd" ]; then
  FANOUT_TWISTD="$(dirname "$PYTHON")/twistd"
fi
export FANOUT_TWISTD
STAMP=$(date -u +%Y%m%d-%H%M%S)
export BENCH_RESULTS="$REPO/bench-results/$STAMP"

if [ "${1:-}" = churn ]; then
  shift
  mkdir -p "$BENCH_RESULTS"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" > "$BENCH_RESULTS/load.txt"
  REPEAT=1 bash "$HARNESS/run.sh" "$REPO/bench/targets/fanout_tx.sh" --scenarios hold \
    --hold-n "${CHURN_N:-10000}" --repeat "${CHURN_CYCLES:-10}" "$@" \
    > "$BENCH_RESULTS/churn.log" 2>&1 || { echo "churn run failed; see $BENCH_RESULTS" >&2; exit 1; }
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$BENCH_RESULTS/load.txt"
  "$PYTHON" "$HERE/churn_report.py" "$BENCH_RESULTS"/*.jsonl
  echo "raw results in $BENCH_RESULTS" >&2
  exit 0
fi

command -v pushpin >/dev/null || { echo "pushpin missing: apt-get install -y pushpin" >&2; exit 2; }
REPEAT=${REPEAT:-2}
mkdir -p "$BENCH_RESULTS"
LOADS="$BENCH_RESULTS/load.txt"
load_now() { echo "$(date -u +%H:%M:%S) $1: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$LOADS"; }

for RUN in $(seq 1 "$REPEAT"); do
  for TARGET in "$REPO/bench/targets/fanout_tx.sh" pushpin; do
    load_now "before $(basename "$TARGET" .sh) run $RUN"
    REPEAT=1 bash "$HARNESS/run.sh" "$TARGET" "$@" --run-index "$RUN" > "$BENCH_RESULTS/$(basename "$TARGET" .sh)-run$RUN.log" 2>&1 || {
      echo "run $RUN of $TARGET failed; see $BENCH_RESULTS" >&2; exit 1; }
    echo "run $RUN/$REPEAT of $(basename "$TARGET" .sh) done" >&2
  done
done
# The scaling line (issue 15): the same server with `workers = 1`, on the figures a second
# process should lift. SCALING=0 leaves it out.
if [ "${SCALING:-1}" != 0 ]; then
  for RUN in $(seq 1 "$REPEAT"); do
    load_now "before fanout_tx_1worker run $RUN"
    REPEAT=1 bash "$HARNESS/run.sh" "$REPO/bench/targets/fanout_tx_1worker.sh" "$@" \
      --scenarios hold,passthrough --run-index "$RUN" \
      > "$BENCH_RESULTS/fanout_tx_1worker-run$RUN.log" 2>&1 || {
      echo "run $RUN of fanout_tx_1worker failed; see $BENCH_RESULTS" >&2; exit 1; }
    echo "run $RUN/$REPEAT of fanout_tx_1worker done" >&2
  done
fi
load_now "after all runs"

NOTES=(--note "harness: REPEAT=$REPEAT per target, alternating; bench.py run options: ${*:-(defaults)}")
NOTES+=(--note "load average (1/5/15 min) around the runs, UTC: $(paste -sd ';' "$LOADS" | sed 's/;/; /g')")
NOTES+=(--note "generated $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))")
"$PYTHON" "$HERE/report.py" --harness "$HARNESS" --out "${RESULTS_MD:-$HERE/RESULTS.md}" \
  "${NOTES[@]}" "$BENCH_RESULTS"/*.jsonl
echo "wrote ${RESULTS_MD:-$HERE/RESULTS.md}; raw results in $BENCH_RESULTS" >&2
