#!/usr/bin/env bash
# Runs make targets in stages, timed: one argument per stage, run in order; the targets of a
# stage (separated by spaces inside the argument) run at the same time, each with its output
# in .cache/make-<target>.log, shown when it ends (whole on failure).
#   scripts/test-stages.sh lint "test-janitor test-playbooks" test-molecule
# Prints "== make TARGET: N s" per target; stops after the first stage with a failure and
# exits 1. Used by `make test`: the janitor tests leave a core mostly idle, which the
# preflight tests and the bench smoke use.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

run() {  # run TARGET: make TARGET, logged and timed; returns its exit status
    local target=$1 start rc=0
    start=$(date +%s)
    make --no-print-directory "$target" > ".cache/make-$target.log" 2>&1 || rc=$?
    echo "$(( $(date +%s) - start )) $rc" > ".cache/make-$target.status"
    return "$rc"
}

for stage in "$@"; do
    read -r -a targets <<< "$stage"
    if [ "${#targets[@]}" -eq 1 ]; then  # alone: its output as it comes
        start=$(date +%s)
        make --no-print-directory "${targets[0]}"
        echo "== make ${targets[0]}: $(( $(date +%s) - start )) s"
        continue
    fi
    pids=()
    for t in "${targets[@]}"; do
        run "$t" & pids+=($!)
    done
    failed=0
    for i in "${!targets[@]}"; do
        wait "${pids[$i]}" || failed=1
    done
    for t in "${targets[@]}"; do
        read -r seconds rc < ".cache/make-$t.status"
        if [ "$rc" -eq 0 ]; then
            tail -n 5 ".cache/make-$t.log"
        else
            cat ".cache/make-$t.log"
        fi
        echo "== make $t: $seconds s$([ "$rc" -eq 0 ] || echo " (FAILED, rc $rc; log: .cache/make-$t.log)")"
    done
    [ "$failed" -eq 0 ] || exit 1
done
