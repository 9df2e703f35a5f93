#!/usr/bin/env bash
# Fails when a Molecule scenario's Storage Box password appears in that scenario's log.
#   scripts/check-secret-leak.sh SCENARIO LOGFILE
# The password is read from molecule/SCENARIO/molecule.yml (storagebox_password in the
# inventory's group_vars); a scenario without one has nothing to leak. The password is
# never printed, nor passed in a command line (grep reads it from a pipe).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SCENARIO LOGFILE" >&2
    exit 2
fi
scenario=$1
log=$2
config="molecule/$scenario/molecule.yml"
[ -f "$config" ] || { echo "check-secret-leak: no $config" >&2; exit 2; }
[ -f "$log" ] || { echo "check-secret-leak: no log $log" >&2; exit 2; }

python=${PYTHON:-python3}
password=$("$python" - "$config" <<'PY'
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as f:
    config = yaml.safe_load(f)
groups = ((config.get("provisioner") or {}).get("inventory") or {}).get("group_vars") or {}
found = {str(v["storagebox_password"]) for v in groups.values() if v and "storagebox_password" in v}
print("\n".join(sorted(found)))
PY
)
if [ -z "$password" ]; then
    echo "check-secret-leak: $scenario sets no storagebox_password: nothing to check"
    exit 0
fi
# -F fixed strings, -f - patterns from stdin (one per line): the password stays off argv.
if hits=$(printf '%s\n' "$password" | grep -cFf - -- "$log"); then
    echo "check-secret-leak: $scenario's storagebox_password appears on $hits line(s) of $log" >&2
    exit 1
fi
echo "check-secret-leak: $scenario: storagebox_password not in $log ($(wc -l < "$log") lines)"
