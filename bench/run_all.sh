#!/usr/bin/env bash
# Every benchmark scenario once, in an order where later ones can use earlier
# figures (persist compares with the memory-store fan-out of the baseline run).
# Each command prints one JSON line and appends it to bench/results/<scenario>.jsonl;
# progress goes to stderr. About 15 minutes on 2 cores. Loopback only.
#
#   python -m pip install -e . -r bench/requirements.txt
#   bash bench/run_all.sh            # from anywhere; venv active (or PYTHON=...)
#   python bench/report.py           # the tables of docs/performance.md
#
# Each command has its own hard limit (--max-seconds, and `timeout` around it), so
# the script always ends by itself; a failed scenario is reported and the rest run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
failed=()
run() {
    local limit=$1
    shift
    timeout --kill-after=30 "$limit" "$PY" bench/run.py "$@" --max-seconds "$((limit - 20))" \
        || failed+=("$*")
}

run 120 client                          # load-generator client choice
# --gc-probe: SyncBridge runs via bench/gcprobe.py (runpy of `syncbridge`, plus one
# gc.callbacks hook) so each step reports its GC pauses; baselines are untouched.
run 600 baseline --gc-probe             # fanout 250x4, idle 5k, connect 2000 vs 4 baselines
run 300 fanout --sessions 1000 --devices 4 --ramp-start 1000 --gc-probe
run 200 fanout --no-ramp --fixed-rate 3000 --gc-probe   # 250x4 at 3000/s on its own
run 240 fanout --gc-threshold 700,10,1000000   # experiment: automatic full collections off
run 240 fanout --gc-threshold 50000,20,10      # experiment: fewer, later collections
run 120 fanout --no-ramp --gc-types --fixed-duration 10   # diagnostics: what the GC traverses
run 300 idle --sizes 1000,5000,10000    # RSS per connection, flatness
run 240 idle --sizes 1000 --mem-probe   # diagnostics: what a connection holds (tracemalloc)
run 120 connect
run 420 persist --gc-probe              # Redis: fan-out, no-listener acks, two processes
run 300 profile --gc-probe              # py-spy: fan-out, connects, Redis acks

if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
