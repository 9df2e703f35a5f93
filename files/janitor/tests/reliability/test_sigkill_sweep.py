"""SIGKILL the janitor at random points of prune, unlink and garbage collection.

At least 50 trials on copies of one store built by real pushes (crashstore). Each trial runs
`python -m registry_janitor sweep --run-once --json` and kills it

- right after the k-th `tag_deleted`, `manifest_unlinked` or `blob_deleted`, or the
  `repository_removed` event (k drawn from the counts an uninterrupted sweep emits),
- at a phase boundary of the janitor's garbage collection (mark, hold, settle, restore,
  delete), where its test hook pauses it,
- a random time after `gc_started` (within the measured GC duration); every other such trial
  runs the registry's own garbage-collect (GC_ENGINE=registry) instead, or
- a pure random delay after the start (within the measured run time),

with SIGKILL to the whole process group (what systemd does to the unit's cgroup) or to the
janitor alone (the OOM killer: a `garbage-collect` child lives on until its next write to
the dead pipe; the trial waits for it). Then:

- every tag the policy keeps is complete on disk (manifest, children, configs, layers, the
  repository's links), and so is every other tag still listed (no half-deleted tag);
- every 5th trial, a registry on the crashed copy serves every kept tag to `skopeo copy`
  (`--all` for indexes);
- the next sweep, not killed, exits 0 and leaves exactly the files an uninterrupted sweep
  leaves: nothing in the trash or the hold, no GC owed, the kept set.

A kill that lands after the janitor exited is a valid trial, counted as "completed before
kill". Seeds are fixed and printed (RELIABILITY_SEED overrides the base seed).

On both store backends: in a bucket every third trial (each kind of kill point at least
twice), where a copy of the store is the slow part. There, with no rename, a tag killed
between its `current/link` and its index links is still listed but does not resolve
(the registry answers "manifest unknown", as while it deletes a tag itself); only tags the
policy prunes may be in that state, and the next sweep removes them.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import crashstore
import janitor
import pytest
from registry import Registry, pull
from registry_janitor import gc
from stores import Store

TRIALS = 70
PULL_EVERY = 5


def trials(backend: str) -> range:
    """Trial numbers per store backend (conftest.py parametrizes with them)."""
    return range(TRIALS) if backend == "filesystem" else range(0, TRIALS, 3)


SEED = int(os.environ.get("RELIABILITY_SEED", "20261127"))
# Garbage collection's phase boundaries, where the janitor's test hook pauses it
# (JANITOR_TEST_PAUSE_DIR): the trial kills it there.
PAUSES = tuple(f"pause:{phase}" for phase in gc.PHASES)
KINDS = (
    "tag_deleted",
    "manifest_unlinked",
    "repository_removed",
    "gc_started",
    "blob_deleted",
    *PAUSES,
    "delay",
)
# What each trial saw last before the kill (see test_kill_points_cover_every_phase).
OUTCOMES: dict[tuple[str, int], str] = {}


@dataclass
class Plan:
    trial: int
    seed: int
    kind: str  # an event type from KINDS, or "delay"
    nth: int  # kill after the nth event of that type
    delay: float  # then wait this long (seconds)
    group: bool  # SIGKILL the process group, or the janitor alone
    engine: str = "janitor"  # GC_ENGINE of the killed sweep

    def __str__(self) -> str:
        what = (
            f"{self.delay:.3f} s after start"
            if self.kind == "delay"
            else (f"{self.delay:.3f} s after {self.kind} #{self.nth}")
        )
        return (
            f"trial {self.trial} seed {self.seed}: SIGKILL {what}"
            f" to {'the process group' if self.group else 'the janitor alone'}"
            f" (gc engine {self.engine})"
        )


def plan(trial: int, ref: crashstore.Reference) -> Plan:
    seed = SEED * 1000 + trial
    rng = random.Random(seed)
    kind = KINDS[trial % len(KINDS)]
    group = (trial // len(KINDS)) % 2 == 0
    nth, delay = 1, 0.0
    if kind == "delay":
        delay = rng.uniform(0, ref.run_seconds * 1.1)
    elif kind == "gc_started":
        delay = rng.uniform(0, ref.gc_seconds * 1.2)
    elif kind == "repository_removed":
        delay = rng.uniform(0, 0.005)
    elif kind in PAUSES:
        delay = 0.0
    else:
        nth = rng.randint(1, ref.counts[kind])
    engine = "registry" if kind == "gc_started" and (trial // len(KINDS)) % 2 else "janitor"
    return Plan(trial, seed, kind, nth, delay, group, engine)


@dataclass
class Run:
    events: list[dict[str, object]] = field(default_factory=list)
    killed: bool = False
    paused: str = ""  # the phase boundary the kill landed at

    @property
    def last_phase(self) -> str:
        if not self.killed:
            return "completed before kill"
        if self.paused:
            return f"at {self.paused}"
        seen = [str(e["event"]) for e in self.events if e["event"] in KINDS]
        return f"after {seen[-1]}" if seen else "before the first deletion"


def group_alive(pgid: int) -> bool:
    """Any process of the group that is not a zombie (an orphaned garbage-collect)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_and_kill(reg: Registry, args: list[str], p: Plan, stderr: Path) -> Run:
    env = crashstore.janitor_env(reg)
    pauses = stderr.parent / "pauses"
    if p.kind in PAUSES:
        # Every other phase boundary passes at once; this one waits to be killed.
        pauses.mkdir()
        for phase in gc.PHASES:
            if f"pause:{phase}" != p.kind:
                (pauses / f"{phase}.go").touch()
        env[gc.PAUSE_DIR_ENV] = str(pauses)
    cmd = crashstore.janitor_command(reg, "sweep", "--json", *args)
    run = Run()
    trigger = threading.Event()
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True
        )
    assert proc.stdout is not None

    def read() -> None:
        n = 0
        for line in proc.stdout:  # type: ignore[union-attr]
            event = json.loads(line)
            run.events.append(event)
            if event["event"] == p.kind:
                n += 1
                if n == p.nth:
                    trigger.set()
        trigger.set()  # EOF: the janitor is done

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if p.kind in PAUSES:
        reached = pauses / f"{p.kind.removeprefix('pause:')}.reached"
        deadline = time.monotonic() + 60
        while not reached.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, f"{p}: never reached {p.kind}"
            time.sleep(0.01)
        run.paused = p.kind if reached.exists() else ""
    elif p.kind != "delay":
        assert trigger.wait(60), f"{p}: no {p.kind} event within 60 s"
    time.sleep(p.delay)
    if proc.poll() is None:
        try:
            if p.group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    run.killed = proc.returncode == -signal.SIGKILL
    assert run.killed or proc.returncode == 0, f"{p}: exit {proc.returncode}: {stderr.read_text()}"
    deadline = time.monotonic() + 30
    while group_alive(proc.pid):  # the orphaned GC dies at its next write to the closed pipe
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{p}: garbage-collect still running 30 s after the janitor died")
        time.sleep(0.02)
    reader.join(10)
    (stderr.parent / "events.json").write_text("\n".join(json.dumps(e) for e in run.events))
    return run


def check_crashed(store: Store, template: crashstore.Template, p: Plan) -> None:
    for ref, digest in template.kept.items():
        repo, tag = ref.rsplit(":", 1)
        assert crashstore.tag_problems(store, repo, tag, digest) == [], f"{p}: kept {ref} broken"
    for repo, tags in crashstore.visible_tags(store).items():
        for tag in tags:
            problems = crashstore.tag_problems(store, repo, tag)
            if (
                store.backend == "s3"
                and f"{repo}:{tag}" in template.pruned
                and problems == [f"{repo}:{tag}: no current/link (FileNotFoundError)"]
            ):
                continue  # being deleted: listed, but it does not resolve (see above)
            assert problems == [], f"{p}: listed {repo}:{tag}"


def pull_kept(reg: Registry, template: crashstore.Template, dest: Path, p: Plan) -> None:
    dest.mkdir()
    reg.start()
    try:
        for i, (ref, _) in enumerate(sorted(template.kept.items())):
            result = pull(reg, ref, dest / str(i), multi=ref in template.multi)
            assert result.returncode == 0, f"{p}: pull {ref}: {result.stderr}"
    finally:
        reg.stop()


def test_sigkill_then_next_sweep(
    template: crashstore.Template, reference: crashstore.Reference, tmp_path: Path, trial: int
) -> None:
    p = plan(trial, reference)
    print(p)
    reg = template.copy_to(tmp_path / "registry")
    args = [*template.sweep_args, "--gc-engine", p.engine]
    run = run_and_kill(reg, args, p, tmp_path / "killed.stderr")
    OUTCOMES[(template.backend, trial)] = run.last_phase
    print(f"{p}: {run.last_phase}, {len(run.events)} events")
    check_crashed(reg.store, template, p)
    if trial % PULL_EVERY == 0:
        pull_kept(reg, template, tmp_path / "pulled", p)
    again = janitor.run(reg, *template.sweep_args)
    assert again.returncode == 0, f"{p}: next sweep failed: {again.stderr}"
    print(f"next sweep:\n{again.stderr}")
    crashstore.check_final(reg.store, template, reference)


def test_kill_points_cover_every_phase(backend: str) -> None:
    """Runs after the trials: the kills really landed in tags, unlink and GC (at least five
    times each with all the trials, at least once with the bucket's third of them)."""
    outcomes = [v for (b, _), v in OUTCOMES.items() if b == backend]
    if len(outcomes) < len(trials(backend)):
        pytest.skip("only meaningful after all the trials ran")
    seen = collections.Counter(v.split(",")[0] for v in outcomes)
    print(backend, dict(seen))
    least = 5 if backend == "filesystem" else 1
    for phase in ("after tag_deleted", "after manifest_unlinked", "after gc_started"):
        assert seen[phase] >= least, dict(seen)
    for phase in PAUSES:  # every phase of the janitor's garbage collection
        assert seen[f"at {phase}"] >= least, dict(seen)
