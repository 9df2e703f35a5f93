"""The janitor's mark against the stock garbage-collect's on the kernel's CIFS client, with
`netem` delay on the guest's interface modelling the round trip to a Storage Box.

Runs against the `vm` scenario's guest after `molecule converge -s vm` (create, prepare,
converge): pushes TAGS small images through the forwarded port (skopeo, layouts from
molecule/janitor/files/ocigen.py), then for each delay sets `tc qdisc … netem delay` on the
guest's route to the Samba host and times, in the janitor's container as the units run it:
a container that does nothing (the start-up cost both others include), `registry
garbage-collect --dry-run` (the stock mark), and `registry-janitor sweep` with DRY_RUN
(prune plan and the janitor's mark, nothing deleted, so every delay sees the same store).
Each row also has the SMB requests the kernel sent meanwhile (`/proc/fs/cifs/Stats`, the
guest's counters, differences). The guest's CPU is emulated (TCG): the figures carry its
cost, which is why the container start is measured beside them.

    molecule converge -s vm
    python3 bench/vm_netem.py [--tags 40] [--delays 0,1,5]
    molecule destroy -s vm
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OCIGEN = ROOT / "molecule" / "janitor" / "files" / "ocigen.py"
SSH_PORT, REGISTRY = 45022, "127.0.0.1:45000"
# The requests counted: every SMB, and the kinds a walk of the store and a mark send.
OPS = ("SMBs", "Creates", "Closes", "QueryDirectories", "QueryInfos", "Reads", "Writes", "SetInfos")
DEFAULT_KEY = ROOT / ".cache" / "vm" / "current" / "id_ed25519"
ssh_key = DEFAULT_KEY  # --key
COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"
RUN = f"{COMPOSE} run --rm --no-deps -T"


def guest(script: str, timeout: int = 1800) -> str:
    argv = [
        "ssh", "-p", str(SSH_PORT), "-i", str(ssh_key), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "molecule@127.0.0.1",
        "sudo", "sh", "-c", json.dumps(script),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        sys.exit(f"in the guest: {script}\n{done.stdout}{done.stderr}")
    return done.stdout


def cifs_counts() -> dict[str, int]:
    """Every 'Name: number' pair of /proc/fs/cifs/Stats, summed over shares."""
    counts: dict[str, int] = {}
    for name, value in re.findall(
        r"([A-Za-z][A-Za-z ]*?): (\d+)", guest("cat /proc/fs/cifs/Stats")
    ):
        counts[name.strip()] = counts.get(name.strip(), 0) + int(value)
    return counts


def timed(script: str) -> dict[str, object]:
    before = cifs_counts()
    start = time.monotonic()
    guest(script)
    seconds = round(time.monotonic() - start, 1)
    after = cifs_counts()
    ops = {k: after.get(k, 0) - before.get(k, 0) for k in OPS}
    return {"seconds": seconds, "smb": ops}


def populate(tags: int, work: Path) -> None:
    for n in range(tags):
        layout = work / f"t{n}"
        spec = {"dir": str(layout), "tag": "t", "kind": "image", "shared": "b", "size": 4096}
        subprocess.run(
            [sys.executable, str(OCIGEN), json.dumps(spec)], check=True, capture_output=True
        )
        subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
             f"oci:{layout}:t", f"docker://{REGISTRY}/bench/app:t{n}"],
            check=True,
        )  # fmt: skip


def main() -> None:
    global ssh_key
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=40)
    ap.add_argument("--delays", default="0,1,5", help="milliseconds, comma-separated")
    ap.add_argument("--key", type=Path, default=DEFAULT_KEY, help="the guest's SSH key")
    args = ap.parse_args()
    ssh_key = args.key
    with tempfile.TemporaryDirectory() as tmp:
        populate(args.tags, Path(tmp))
    dev = guest("ip -o route get 10.0.2.2").split(" dev ")[1].split()[0]
    for delay in (int(d) for d in args.delays.split(",")):
        guest(
            f"tc qdisc del dev {dev} root 2>/dev/null;"
            + (f" tc qdisc add dev {dev} root netem delay {delay}ms" if delay else " true")
        )
        row: dict[str, object] = {"delay_ms": delay, "tags": args.tags}
        row["container_start"] = timed(f"{RUN} janitor true")
        row["garbage_collect_dry_run"] = timed(
            f"{RUN} janitor registry garbage-collect --dry-run /etc/docker/registry/config.yml"
            " >/dev/null"
        )
        row["janitor_sweep_dry_run"] = timed(
            f"{RUN} -e DRY_RUN=true -e KEEP_LAST_N=5 janitor registry-janitor sweep >/dev/null"
        )
        print(json.dumps(row), flush=True)
    guest(f"tc qdisc del dev {dev} root 2>/dev/null; true")


if __name__ == "__main__":
    main()
