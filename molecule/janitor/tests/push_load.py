"""Pushes go on while sweeps with garbage collection run: the body of the tests in
test_pushes_during_janitor_gc.py and test_pushes_during_gc_window.py.

A bounded load (files/pushload.py, skopeo inside the host) pushes images continuously into
load/r0..r3 while sweeps run through registry-janitor.service (20 by default; host variable
pushload_sweeps). Each image reuses a layer of an image pushed 20-120 pushes earlier, which
the sweeps are pruning and collecting: the case where a push that finds a layer "already
there" races GC deleting it. After every sweep, every push that reported success since the
last check must pull completely by digest; at the end every kept tag must.

Each host of group pushload runs its own janitor_gc_engine:
- janitor (the default): no read-only window. Verified pushes are aged past both graces so
  every sweep holds, settles and deletes real garbage while the load reuses it. Nothing may
  be lost or broken, and no push is refused: the janitor reads the registry's log
  (registry_log_dir) before each hold batch and never holds a layer a client HEADed, and
  puts a held one back the moment a client asks for it.
- registry: writes are refused, not corrupted, during the read-only GC window, and the
  journal says for how long.

PUSHLOAD_GC_WINDOW=none runs the same load against the unsafe mode (for docs/reliability.md;
it records what breaks instead of failing). Figures land in
$MOLECULE_PROJECT_DIRECTORY/.cache/pushload-<window>.json.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import testinfra.utils.ansible_runner
from registry_cache_testing import sh, sweep_by_service

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


def hosts_with_engine(engine: str) -> list[str]:
    """The hosts of group pushload whose janitor_gc_engine is `engine`: each engine's test
    file (test_pushes_during_*.py) runs on its own xdist worker, so the loads run at the
    same time."""
    return [
        f"ansible://{name}"
        for name in RUNNER.get_hosts("pushload")
        if RUNNER.get_variables(name).get("janitor_gc_engine", "janitor") == engine
    ]


WINDOW = os.environ.get("PUSHLOAD_GC_WINDOW", "readonly")
LOAD = "/usr/local/lib/molecule-janitor/pushload.py"
WORK = "/var/tmp/pushload"
OUT, STOP, STATE = f"{WORK}/out.jsonl", f"{WORK}/stop", f"{WORK}/checked.json"
SCRIPT = "/usr/local/sbin/registry-cache-sweep"
V2 = "/var/lib/registry-cache/data/docker/registry/v2"
REFUSED_FOR = re.compile(r"pushes refused for ([0-9.]+) s")
JANITOR_GC = re.compile(r"sweep done: .*, gc [0-9.]+ s")
RECLAIMED = re.compile(r"(\d+) blobs? / [^,]* reclaimed")
PUT_BACK = re.compile(r"(\d+) held blobs? put back")


def stop_load(host, stop_file: str, unit: str) -> None:
    """Asks the load (files/pushload.py) to stop after its current push and waits for it."""
    sh(host, f"touch {stop_file}")
    for _ in range(120):
        if host.run(f"systemctl is-active --quiet {unit}").rc != 0:
            break
        time.sleep(1)


def check_pushes(host) -> dict:
    return json.loads(sh(host, f"python3 {LOAD} --check {OUT} {STATE}").strip().splitlines()[-1])


def run_push_load(host) -> None:
    """The test body, for each engine's test file."""
    hostvars = host.ansible.get_variables()
    engine = hostvars.get("janitor_gc_engine", "janitor")
    sweeps = int(os.environ.get("PUSHLOAD_SWEEPS", hostvars.get("pushload_sweeps", 20)))
    sh(host, f"rm -rf {WORK} && mkdir -p {WORK}")
    if WINDOW != "readonly":
        sh(host, f"sed -i 's/^GC_WINDOW=.*/GC_WINDOW={WINDOW}/' {SCRIPT}")
    sh(
        host,
        "systemd-run --quiet --unit=molecule-pushload --collect "
        f"python3 {LOAD} {OUT} {STOP} --repos 4",
    )
    windows, gc_runs, broken, lost, checked = [], 0, [], [], 0
    reclaimed, put_back = 0, 0
    started = time.monotonic()
    try:
        time.sleep(15)  # a first batch of pushes to prune
        for _ in range(sweeps):
            # Verified pushes only: see pushload.py --age.
            sh(host, f"python3 {LOAD} --age {OUT} {STATE} {V2}")
            log = sweep_by_service(host)
            gc_runs += bool(JANITOR_GC.search(log)) if engine == "janitor" else "gc done:" in log
            reclaimed += sum(int(n) for n in RECLAIMED.findall(log))
            put_back += sum(int(n) for n in PUT_BACK.findall(log))
            windows += [float(x) for x in REFUSED_FOR.findall(log)]
            summary = check_pushes(host)
            broken += summary["broken"]
            lost += summary["lost"]
            checked += summary["checked"]
    finally:
        stop_load(host, STOP, "molecule-pushload")
        if WINDOW != "readonly":
            sh(host, f"sed -i 's/^GC_WINDOW=.*/GC_WINDOW=readonly/' {SCRIPT}")
    elapsed = time.monotonic() - started

    # The load has stopped: one more sweep, then every push since the last check and every
    # tag the policy kept must pull completely.
    sh(host, "systemctl start registry-janitor.service")
    final = check_pushes(host)
    broken += final["broken"]
    lost += final["lost"]
    checked += final["checked"]
    pushed_ok = {
        json.loads(line)["ref"]
        for line in sh(host, f"cat {OUT}").splitlines()
        if json.loads(line)["ok"]
    }
    listed = []
    for r in range(4):
        out = host.run(f"curl -sf http://127.0.0.1:5000/v2/load/r{r}/tags/list").stdout
        listed += [f"load/r{r}:{t}" for t in (json.loads(out or "{}").get("tags") or [])]
    # A push refused halfway (its connection cut by a restart) may leave a tag directory
    # without current/link; the janitor removes those after an hour. Only pushes that
    # reported success are owed a pull.
    kept_refs = [ref for ref in listed if ref in pushed_ok]
    kept_broken = []
    for ref in kept_refs:
        pulled = host.run(
            f"rm -rf {WORK}/kept && skopeo --insecure-policy copy -q --src-tls-verify=false "
            f"docker://127.0.0.1:5000/{ref} oci:{WORK}/kept:x"
        )
        if pulled.rc != 0:
            kept_broken.append({"ref": ref, "error": pulled.stderr[-300:]})

    figures = {
        "gc_engine": engine,
        "gc_window": WINDOW if engine == "registry" else "none",
        "sweeps": sweeps,
        "sweeps_with_gc": gc_runs,
        "blobs_reclaimed": reclaimed,
        "held_blobs_put_back": put_back,
        "seconds": round(elapsed, 1),
        "pushes": final["pushes"],
        "pushes_refused": final["refused"],
        "refused_errors": final["refused_errors"],
        "pushes_checked": checked,
        "lost": len(lost),
        "broken": len(broken),
        "kept_tags": len(kept_refs),
        "listed_tags_of_refused_pushes": len(listed) - len(kept_refs),
        "kept_broken": len(kept_broken),
        "write_unavailable_s": {
            "min": min(windows, default=0),
            "median": sorted(windows)[len(windows) // 2] if windows else 0,
            "max": max(windows, default=0),
        },
        "examples": (broken + lost + kept_broken)[:5],
    }
    project = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
    (project / ".cache").mkdir(exist_ok=True)
    name = engine if engine == "janitor" else WINDOW
    (project / ".cache" / f"pushload-{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))

    assert gc_runs >= sweeps, figures
    assert checked >= 10 * sweeps // 4, figures  # the load really ran alongside
    assert len(kept_refs) == 8, figures  # 4 repositories x KEEP_LAST_N 2
    if engine == "janitor":
        assert reclaimed > 0, figures  # the sweeps really collected what the load reuses
        assert final["refused"] == 0, figures
        assert (broken, lost, kept_broken) == ([], [], []), figures
    elif WINDOW == "readonly":
        assert len(windows) >= sweeps, figures
        assert (broken, lost, kept_broken) == ([], [], []), figures
