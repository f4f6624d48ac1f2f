#!/usr/bin/env bash
# `make test-stress`: the whole suite RUNS times in a row (default 5) beside a CPU hog on every core, so a
# test that depends on the machine's speed shows up as a failure here rather than as a rare flake.
# Stops at the first failing run and says which; prints the wall time of each run.
#   RUNS=1 scripts/stress.sh tests/test_keys.py -x     (arguments go to pytest; default: the whole suite)
#   HOGS=N (default: one per core), PYTEST="command" (default: .venv/bin/pytest)
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
HOGS=${HOGS:-$(nproc)}
read -r -a PYTEST <<<"${PYTEST:-.venv/bin/pytest}"

hogs=()
stop_hogs() {
    # only the hogs this script started, by pid
    if ((${#hogs[@]})); then
        kill "${hogs[@]}" 2>/dev/null
        wait "${hogs[@]}" 2>/dev/null
    fi
    hogs=()
}
trap stop_hogs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((i = 0; i < HOGS; i++)); do
    yes >/dev/null &
    hogs+=($!)
done
echo "stress: $HOGS CPU hogs (pids ${hogs[*]}); $RUNS runs of: ${PYTEST[*]} -q $*"

times=()
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
all_start=$EPOCHREALTIME
for ((run = 1; run <= RUNS; run++)); do
    echo "=== stress run $run of $RUNS ($(date +%H:%M:%S))"
    start=$EPOCHREALTIME
    "${PYTEST[@]}" -q "$@"
    code=$?
    took=$(seconds "$start" "$EPOCHREALTIME")
    times+=("run $run: ${took} s")
    if ((code != 0)); then
        echo "stress: run $run of $RUNS FAILED (pytest exit $code) after ${took} s" \
            "(earlier runs passed: $((run - 1)))"
        exit 1
    fi
    echo "=== stress run $run of $RUNS passed in ${took} s"
done
echo "stress: all $RUNS runs passed under $HOGS CPU hogs in $(seconds "$all_start" "$EPOCHREALTIME") s"
printf '  %s\n' "${times[@]}"
