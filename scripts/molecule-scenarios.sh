#!/usr/bin/env bash
# Runs `molecule test` for each scenario named, up to JOBS at a time (default 2), each with
# its log in .cache/molecule-<scenario>.log (every line time-stamped), then checks each log
# for the scenario's Storage Box passwords (scripts/check-secret-leak.sh).
#   scripts/molecule-scenarios.sh [-j JOBS] SCENARIO...
# Prints each scenario's steps as they start and end, its duration, and on failure the end
# of its log; at the very end, a few lines naming each failed scenario, its failing step and
# its first error lines (CI shows only the last lines of a run); exits non-zero if any
# failed. Scenarios have their own container names and folders, so different ones can run
# at the same time; the same one twice cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=2
if [ "${1:-}" = -j ]; then
    jobs=$2
    shift 2
fi
[ $# -gt 0 ] || { echo "usage: $0 [-j JOBS] SCENARIO..." >&2; exit 2; }
mkdir -p .cache

# One scenario: molecule test with a time-stamped log; its steps are shown as they start
# and end; prints "== molecule S: N s (rc R)" and, on failure, the end of the log.
run_one() {
    local s=$1 log=.cache/molecule-$1.log start rc
    start=$(date +%s)
    echo "== molecule test -s $s (log: $log)"
    PYTHONUNBUFFERED=1 molecule test -s "$s" 2>&1 | awk '{ print strftime("%H:%M:%S"), $0; fflush() }' | tee "$log" |
        { grep --line-buffered -E '^[0-9:]+ INFO .*(Executing|Executed: .*)$' | sed -u "s/^/   [$s] /"; true; }
    rc=${PIPESTATUS[0]}
    scripts/check-secret-leak.sh "$s" "$log" || rc=1
    echo "== molecule $s: $(( $(date +%s) - start )) s (rc $rc)"
    echo "$rc" > ".cache/molecule-$s.rc"
    if [ "$rc" -ne 0 ]; then
        echo "== end of $log:"
        tail -n 60 "$log"
    fi
    return "$rc"
}
export -f run_one

# The failed scenario's step, then its first error lines: an Ansible task's failure, a
# pytest assertion, a Molecule error (not Ansible's "FAILED - RETRYING" of a task that waits,
# which every scenario's create prints); each cut to 160 characters.
summarise_failure() {
    local s=$1 log=.cache/molecule-$1.log step
    # grep finding nothing must not end the script (set -e, pipefail): the summary is the point.
    step=$({ grep -oE '\[[a-z0-9_-]+ > [a-z_]+\] Executing' "$log" || true; } | tail -n 1 | sed 's/ Executing//')
    echo "== FAILED: molecule $s, in ${step:-no step} (log: $log)"
    { grep -E 'fatal: |FAILED|failed=[1-9]|^[0-9:]+ E  |ERROR |CRITICAL ' "$log" || true; } |
        { grep -v 'FAILED - RETRYING' || true; } | head -n 6 | cut -c 1-160
}

for s in "$@"; do rm -f ".cache/molecule-$s.rc"; done
# xargs runs up to $jobs at a time and exits 123 when any of them failed.
rc=0
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'run_one "$1"' _ {} || rc=$?
for s in "$@"; do
    if [ "$(cat ".cache/molecule-$s.rc" 2>/dev/null)" != 0 ]; then
        summarise_failure "$s"
    fi
done
exit "$rc"
