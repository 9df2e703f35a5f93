"""Pushes go on while site.yml is applied again with changed settings, as an operator does to
add a mirror or retune the janitor: the push load of push_load.py (files/pushload.py) runs
on a pushload host while `ansible-playbook site.yml --limit HOST` adds a pull-through mirror,
changes a janitor setting and opens a firewall port. Not one push may be refused: only the
new mirror is started, and the push registry's container is the one that ran before.

CONVERGE_PROJECT_DIRECTORY runs another checkout's site.yml against the same host (how the
figures for the handler that restarted the whole unit were measured). Figures land in
$MOLECULE_PROJECT_DIRECTORY/.cache/pushes-during-converge.json.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from push_load import LOAD, stop_load
from registry_cache_testing import controller_tool, sh

WORK = "/var/tmp/pushload-converge"
COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A mirror of the push registry itself (its Compose service name on the project network):
# no upstream outside the host is needed.
CHANGES = {
    "registry_mirrors_data_dir": "/var/lib/registry-cache/mirrors",
    "registry_mirrors": [{"name": "self", "remote_url": "http://registry:5000", "port": 5002}],
    "janitor_keep_last_n": 3,
    "host_firewall_open_ports": [{"port": 9100, "cidrs": ["198.51.100.0/24"]}],
}


def started_at(host, service: str) -> str:
    cid = sh(host, f"{COMPOSE} ps -q {service}").strip()
    return sh(host, f"docker inspect --format '{{{{.State.StartedAt}}}}' {cid}").strip()


def converge(host_name: str) -> tuple[subprocess.CompletedProcess, float, float]:
    project = os.environ.get("MOLECULE_PROJECT_DIRECTORY", str(Path(__file__).parents[3]))
    project = os.environ.get("CONVERGE_PROJECT_DIRECTORY", project)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as extra:
        json.dump(CHANGES, extra)
    start = time.time()
    result = subprocess.run(
        [controller_tool("ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "--limit", host_name, "-e", f"@{extra.name}", "site.yml"],
        cwd=project, capture_output=True, text=True, timeout=1800, check=False,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"},
    )  # fmt: skip
    os.unlink(extra.name)
    result.stdout = ANSI.sub("", result.stdout)
    return result, start, time.time()


def run_converge_under_load(host) -> None:
    """The test body (test_pushes_during_gc_window.py, after its own load: the changed
    settings would change what that test keeps)."""
    host_name = host.backend.get_hostname()
    registry_before = started_at(host, "registry")
    sh(host, f"rm -rf {WORK} && mkdir -p {WORK}")
    # pushload.py builds its layouts in /var/tmp/pushload whatever OUT is.
    sh(
        host,
        "systemd-run --quiet --unit=molecule-pushload-converge --collect "
        f"python3 {LOAD} {WORK}/out.jsonl {WORK}/stop --repos 2",
    )
    try:
        time.sleep(5)
        result, start, end = converge(host_name)
    finally:
        stop_load(host, f"{WORK}/stop", "molecule-pushload-converge")
    pushes = [json.loads(line) for line in sh(host, f"cat {WORK}/out.jsonl").splitlines()]
    during = [p for p in pushes if p["end"] >= start and p["start"] <= end]
    handlers = sorted(set(re.findall(r"RUNNING HANDLER \[([^\]]+)\]", result.stdout)))
    figures = {
        "site_yml": os.environ.get("CONVERGE_PROJECT_DIRECTORY", "this checkout"),
        "converge_seconds": round(end - start, 1),
        "pushes": len(pushes),
        "pushes_during_converge": len(during),
        "pushes_refused": sum(not p["ok"] for p in pushes),
        "refused_errors": [p["error"] for p in pushes if not p["ok"]][:3],
        "handlers": handlers,
        "recap": [line for line in result.stdout.splitlines() if " ok=" in line],
    }
    project = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
    (project / ".cache").mkdir(exist_ok=True)
    (project / ".cache" / "pushes-during-converge.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert len(during) >= 10, figures  # the load really ran through the converge
    assert figures["pushes_refused"] == 0, figures
    assert started_at(host, "registry") == registry_before, figures
    assert not any("Restart the push registry" in name for name in handlers), figures
    # The new mirror serves (it proxies the push registry).
    sh(host, "curl -sf http://127.0.0.1:5002/v2/ >/dev/null")
    assert "KEEP_LAST_N='3'" in sh(host, "cat /opt/registry-cache/janitor.env")
    assert "9100" in sh(host, "nft list table inet registry_cache")
