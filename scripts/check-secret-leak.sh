#!/usr/bin/env bash
# Fails when a Molecule scenario's Storage Box password, a mirror's upstream password or a
# bucket's secret key (registry_s3_secret_key) appears in that scenario's log.
#   scripts/check-secret-leak.sh SCENARIO LOGFILE
# The passwords are read from the shared .config/molecule/config.yml and from
# molecule/SCENARIO/molecule.yml (storagebox_password, registry_s3_secret_key and
# registry_mirrors[].password in the inventory's group_vars and host_vars); a scenario without one has nothing to leak. The
# passwords are never printed, nor passed in a command line (grep reads them from a pipe).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SCENARIO LOGFILE" >&2
    exit 2
fi
scenario=$1
log=$2
config="molecule/$scenario/molecule.yml"
base=.config/molecule/config.yml
[ -f "$config" ] || { echo "check-secret-leak: no $config" >&2; exit 2; }
[ -f "$log" ] || { echo "check-secret-leak: no log $log" >&2; exit 2; }

python=${PYTHON:-python3}
password=$("$python" - "$base" "$config" <<'PY'
import os
import sys

import yaml

found = set()
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    inventory = (config.get("provisioner") or {}).get("inventory") or {}
    for kind in ("group_vars", "host_vars"):
        for v in (inventory.get(kind) or {}).values():
            for key in ("storagebox_password", "registry_s3_secret_key"):
                if v and v.get(key):
                    found.add(str(v[key]))
            for mirror in (v or {}).get("registry_mirrors") or []:
                if mirror.get("password"):
                    # molecule.yml is interpolated by molecule: "$$" stands for "$".
                    found.add(str(mirror["password"]).replace("$$", "$"))
print("\n".join(sorted(found)))
PY
)
if [ -z "$password" ]; then
    echo "check-secret-leak: $scenario sets no password: nothing to check"
    exit 0
fi
# -F fixed strings, -f - patterns from stdin (one per line): the password stays off argv.
if hits=$(printf '%s\n' "$password" | grep -cFf - -- "$log"); then
    echo "check-secret-leak: a password of $scenario appears on $hits line(s) of $log" >&2
    exit 1
fi
echo "check-secret-leak: $scenario: $(printf '%s\n' "$password" | wc -l) password(s), none in $log ($(wc -l < "$log") lines)"
