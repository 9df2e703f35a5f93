"""Two sweeps at once (the timer plus a manual one), janitor level.

Real `registry-janitor` processes on copies of the store built by real pushes:

- two `sweep --run-once` started together (seeded stagger): never both at work. Each exits 0,
  or exits 1 with `another sweep holds the lock <path>` having changed nothing; between them
  every deletion happens exactly once and the store ends as after one uninterrupted sweep;
- the timer's loop mode running while manual `sweep`, `prune` and `gc` runs are fired at it:
  the same rules, the loop keeps going after a refused sweep, and stops cleanly on SIGTERM.

(The systemd side, a manual `systemctl start` while the timer's run is active, is the role's.)
"""

from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import crashstore
import janitor
import pytest
from registry import Registry

TRIALS = 10
SEED = 4_2026
CHANGES = ("tag_deleted", "manifest_unlinked", "repository_removed", "gc_started")
OVERLAPS: dict[tuple[str, int], bool] = {}


def trials(backend: str) -> range:
    """Trial numbers per store backend (conftest.py parametrizes with them)."""
    return range(TRIALS) if backend == "filesystem" else range(4)


def start(
    reg: Registry,
    out: Path,
    command: str,
    *args: str,
    run_once: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    with out.with_suffix(".out").open("wb") as stdout, out.with_suffix(".err").open("wb") as err:
        return subprocess.Popen(
            crashstore.janitor_command(reg, command, "--json", *args, run_once=run_once),
            stdout=stdout,
            stderr=err,
            env=crashstore.janitor_env(reg) | (env or {}),
        )


# The first sweep holds the lock for at least this long (it settles with blobs held), so
# the second, started within 0.05 s, finds it held unless the machine starves it that long:
# without it, on a loaded machine, a whole sweep could end before the second one started.
CONTEST = {"GC_SETTLE": "1"}


def events(out: Path) -> list[dict[str, object]]:
    text = out.with_suffix(".out").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_exclusive(reg: Registry, outs: dict[Path, int]) -> tuple[int, collections.Counter[str]]:
    """Each run exited 0, or 1 refused by the lock without changing anything. Returns the
    number of refusals and the changes counted over every run."""
    refused = 0
    total: collections.Counter[str] = collections.Counter()
    for out, code in outs.items():
        evs = events(out)
        kinds = collections.Counter(str(e["event"]) for e in evs)
        assert kinds["error"] == 0 and kinds["gc_failed"] == 0, evs
        if code == 1:
            locked = [e for e in evs if e["event"] == "locked"]
            assert locked, f"{out.name}: exit 1 without a lock refusal: {evs}"
            lock = reg.store.lock_file
            assert f"another sweep holds the lock {lock}" in str(locked[0]["message"])
            assert not any(kinds[c] for c in CHANGES), f"{out.name} was refused yet changed {kinds}"
            refused += kinds["locked"]
        else:
            assert code == 0, f"{out.name}: exit {code}: {out.with_suffix('.err').read_text()}"
            refused += kinds["locked"]  # loop mode: a refused sweep is logged, the loop goes on
        total.update({c: kinds[c] for c in CHANGES})
    return refused, total


def test_two_sweeps_started_together(
    template: crashstore.Template, reference: crashstore.Reference, tmp_path: Path, trial: int
) -> None:
    stagger = random.Random(SEED + trial).uniform(0, 0.05)
    print(f"trial {trial} seed {SEED + trial}: second sweep {stagger:.3f} s after the first")
    reg = template.copy_to(tmp_path / "registry")
    first = start(reg, tmp_path / "first", "sweep", *template.sweep_args, env=CONTEST)
    time.sleep(stagger)
    second = start(reg, tmp_path / "second", "sweep", *template.sweep_args, env=CONTEST)
    outs = {tmp_path / "first": first.wait(60), tmp_path / "second": second.wait(60)}
    refused, total = check_exclusive(reg, outs)
    OVERLAPS[(template.backend, trial)] = refused == 1
    for kind in ("tag_deleted", "manifest_unlinked", "repository_removed"):
        assert total[kind] == reference.counts[kind], f"{kind}: {total[kind]} over both runs"
    # The janitor's engine collects in every sweep that ran; a refused one runs none.
    assert total["gc_started"] == 2 - refused
    crashstore.check_final(reg.store, template, reference)


def test_two_sweeps_really_overlapped(backend: str) -> None:
    """Runs after the trials: most of them were a real contest for the lock."""
    overlaps = [v for (b, _), v in OVERLAPS.items() if b == backend]
    if len(overlaps) < len(trials(backend)):
        pytest.skip("only meaningful after all the trials ran")
    print(f"{sum(overlaps)} of {len(overlaps)} pairs overlapped (the second was refused)")
    assert sum(overlaps) >= (3 if backend == "filesystem" else 1), OVERLAPS


def test_timer_loop_with_manual_runs_fired_at_it(
    template: crashstore.Template, reference: crashstore.Reference, tmp_path: Path
) -> None:
    reg = template.copy_to(tmp_path / "registry")
    loop = start(
        reg,
        tmp_path / "loop",
        "sweep",
        *template.sweep_args,
        "--interval-secs",
        "1",
        run_once=False,
    )
    rng = random.Random(SEED)
    manual: dict[Path, subprocess.Popen[bytes]] = {}
    try:
        for i, command in enumerate(
            ["sweep", "prune", "sweep", "gc", "sweep", "prune", "sweep", "gc"]
        ):
            time.sleep(rng.uniform(0.0, 0.15))
            args = [] if command == "gc" else template.sweep_args
            manual[tmp_path / f"manual{i}-{command}"] = start(
                reg, tmp_path / f"manual{i}-{command}", command, *args
            )
        outs = {out: proc.wait(60) for out, proc in manual.items()}
        time.sleep(1.5)  # one more loop sweep after the manual ones
        assert loop.poll() is None, "the loop stopped"
    finally:
        loop.send_signal(signal.SIGTERM)
        code = loop.wait(30)
    assert code == 0, (tmp_path / "loop.err").read_text()
    outs[tmp_path / "loop"] = 0
    refused, total = check_exclusive(reg, outs)
    print(f"{refused} refusals; changes over all runs: {dict(total)}")
    for kind in ("tag_deleted", "manifest_unlinked", "repository_removed"):
        assert total[kind] == reference.counts[kind], f"{kind}: {total[kind]} over all runs"
    final = janitor.run(reg, *template.sweep_args)
    assert final.returncode == 0, final.stderr
    crashstore.check_final(reg.store, template, reference)
