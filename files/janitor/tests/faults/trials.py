"""Fault trials: random stores x random faults, through the real CLI, on both backends.

Each trial generates a random store (faultstore.py), picks one to three faults (`plan`),
runs ``registry-janitor sweep --run-once --json`` (prune + GC) through the fault layer
(faultfs.py for a directory, faultproxy.py in front of the RADOS Gateway for a bucket), and
then, reading the store with no fault layer in between, checks:

1. **no blob that a tag the registry served before the run and still serves needs is gone**
   (nor its revision links): the needed set is computed from the store itself
   (faultstore.needs), not with the janitor's code;
2. nothing is left in the janitor's hold (``.registry-janitor-held``): an error while holding
   must put back what was held;
3. **a fault that changed the outcome was reported**: when faults fired and the run exited 0
   without an error event, a reference run without faults on a fresh copy of the same store
   must have left exactly the same registry files. ENOENT faults are left out of this check:
   "not there" is an answer the janitor must believe (a concurrent push or deletion gives the
   same), so only the first two checks apply to them.

Usage (also ``make fault-trials TRIALS=500 SEED=1``)::

    python files/janitor/tests/faults/trials.py --backend filesystem --trials 500 --seed 1
    python files/janitor/tests/faults/trials.py --backend s3 --trials 500 --seed 1

Per trial it prints one line; at the end, per backend: trials, faults injected (planned),
faults that fired, runs that reported an error, blobs deleted, blobs wrongly deleted,
entries left held, unreported outcome changes, and the failing trials with their seeds.
A trial is repeated alone with ``--only N`` and the same ``--seed``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faultfs
import faultstore
from faultproxy import FaultProxy
from faultrules import read_log, write_control
from faultstore import HELD, Generated

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
# The janitor under trial: this checkout's, or another's (FAULT_TRIALS_JANITOR_SRC, e.g. an
# older commit's `files/janitor/src` exported with git archive, for a before/after figure).
SRC = os.environ.get("FAULT_TRIALS_JANITOR_SRC") or str(TESTS.parent / "src")

# The sweep's settings: nothing pushes during a trial, so held blobs need not wait
# (GC_SETTLE); graces stay at their defaults (2 h, 1 h): the store's young blobs and pushes are
# a minute old, the rest 30 days.
SETTLE = os.environ.get("FAULT_TRIALS_GC_SETTLE", "0")
# Events of the janitor's JSON output a fault can wait for (`after`): the trial runner creates
# the rule's trigger file when the event comes.
TRIGGERS = ("tag_deleted", "manifest_unlinked", "gc_started")
REPORTED_EVENTS = {"error", "gc_failed", "gc_refused", "gc_recheck_failed", "blob_not_held"}
# Metrics (the Prometheus textfile, --metrics-file) that report a fault: name -> is it
# reporting one at this value.
REPORTING_METRICS = {
    "registry_janitor_last_run_success": lambda v: v == 0,
    "registry_janitor_blobs_not_held_total": lambda v: v > 0,
}
JANITOR_TIMEOUT = 120
HEX = re.compile(r"[0-9a-f]{64}")

FS_FAULTS = {
    "readdir": ("EIO", "EACCES", "ESTALE", "EINTR", "ENOENT"),
    "opendir": ("EIO", "EACCES", "ESTALE", "ENOENT"),
    "getattr": ("EIO", "EACCES", "ESTALE", "EINTR", "ENOENT"),
    "open": ("EIO", "EACCES", "ESTALE", "EINTR", "ENOENT"),
    "read": ("EIO", "EINTR", "short"),
    "rename": ("EIO", "EBUSY", "EACCES", "ESTALE"),
    "unlink": ("EIO", "EBUSY", "EACCES"),
    "rmdir": ("EIO", "EBUSY", "EACCES"),
    "mkdir": ("EIO", "EACCES"),
}
S3_FAULTS = {
    "list": ("503", "500", "reset", "truncate"),
    "get": ("503", "500", "reset"),
    "head": ("503", "500", "reset"),
    "put": ("503", "500", "reset"),
    "copy": ("503", "500", "reset"),
    "delete": ("503", "500", "reset"),
    "delete_many": ("503", "500", "reset"),
}
# Operations that read directories, files, or change the store (which targets fit).
DIR_OPS = {"readdir", "opendir", "list", "rmdir", "mkdir"}
CHANGE_OPS = {"rename", "unlink", "rmdir", "mkdir", "put", "copy", "delete", "delete_many"}


@dataclass
class Fault:
    """One rule of the control file, before the backend anchors its path."""

    op: str
    fault: str
    target: str  # a store path (directory or file), or a janitor directory
    nth: int = 1
    times: int | None = None  # None: every matching call from the nth on
    probability: float = 1.0
    after: str | None = None  # an event of TRIGGERS
    exact: bool = False  # the target itself, not what is below it

    def __str__(self) -> str:
        when = f"#{self.nth}" + (f" x{self.times}" if self.times else "+")
        when += f" p={self.probability:.2f}" if self.probability < 1 else ""
        when += f" after {self.after}" if self.after else ""
        return f"{self.op} {self.fault} {self.target}{'' if self.exact else '/**'} {when}"


# How often each operation is picked: the reads a scan and a mark depend on most.
WEIGHTS = {"readdir": 3, "opendir": 2, "getattr": 2, "open": 2, "read": 2, "rename": 2,
           "unlink": 1, "rmdir": 1, "mkdir": 1,
           "list": 5, "get": 2, "head": 2, "put": 1, "copy": 2, "delete": 1, "delete_many": 1}  # fmt: skip
# Where the janitor changes things: its hold and trash, blob directories, repositories.
CHANGE_TARGETS = (HELD, ".registry-janitor-trash", faultstore.BLOBS, faultstore.REPOSITORIES)


def plan(rng: random.Random, gen: Generated, backend: str) -> list[Fault]:
    """One to three random faults on paths of this store."""
    table = FS_FAULTS if backend == "filesystem" else S3_FAULTS
    ops = sorted(table)
    faults = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.choices(ops, [WEIGHTS[o] for o in ops])[0]
        fault = rng.choice(table[op])
        if op in CHANGE_OPS:
            target = rng.choice([*CHANGE_TARGETS, *gen.directories()])
            exact = False
        elif op in DIR_OPS:
            target, exact = rng.choice(gen.directories()), True
        else:
            target, exact = rng.choice(gen.directories() + gen.files()), rng.random() < 0.5
        if fault == "ENOENT":
            times: int | None = 1  # a lie if it lasts: see the module docstring
        elif fault == "EINTR":
            # A signal interrupts one call; Python retries it (PEP 475), forever if every
            # retry is interrupted again.
            times = rng.choice((1, 2))
        else:
            times = rng.choice((1, 2, None, None, None))
        faults.append(
            Fault(
                op, fault, target,
                nth=rng.choice((1, 1, 2, 3)),
                times=times,
                probability=rng.choice((1.0, 1.0, 1.0, 0.5)),
                after=rng.choice((None, None, None, None, None, *TRIGGERS)),
                exact=exact,
            )
        )  # fmt: skip
    return faults


def _namespace(gen: Generated) -> str:
    """A directory under repositories/ that holds repositories (a namespace if there is one,
    else a repository)."""
    return f"{faultstore.REPOSITORIES}/{(gen.namespaces or gen.repositories)[0]}"


# The named faults (each once lost data or left blobs held), each on every matching call (boto3's retries see it too), as
# the trials' first check that they can fail: `--scenario NAME`, and the tests in
# test_fault_trials.py.
SCENARIOS: dict[str, dict[str, Any]] = {
    # A soft CIFS mount answers EIO in a hiccup; a directory mode 000 gives EACCES.
    "unlistable-namespace": {
        "filesystem": lambda g: [Fault("readdir", "EACCES", _namespace(g), exact=True),
                                 Fault("opendir", "EACCES", _namespace(g), exact=True)],
        "s3": lambda g: [Fault("list", "503", _namespace(g), exact=True)],
    },
    "unlistable-revisions": {
        "filesystem": lambda g: [Fault("readdir", "EIO", f"{faultstore.REPOSITORIES}/"
                                       f"{g.repositories[0]}/_manifests/revisions/sha256",
                                       exact=True)],
        "s3": lambda g: [Fault("list", "500", f"{faultstore.REPOSITORIES}/"
                               f"{g.repositories[0]}/_manifests/revisions/sha256", exact=True)],
    },
    # The second blob to be held fails (Samba: EBUSY on a directory holding an open file).
    "hold-fails": {
        "filesystem": lambda g: [Fault("rename", "EBUSY", HELD, nth=2)],
        "s3": lambda g: [Fault("copy", "500", HELD, nth=2)],
    },
    # IsTruncated without a NextContinuationToken, taken as the whole listing.
    "truncated-listing": {
        "s3": lambda g: [Fault("list", "truncate", faultstore.REPOSITORIES, exact=True),
                         Fault("list", "truncate", _namespace(g), exact=True)],
    },
}  # fmt: skip


# -- backends ---------------------------------------------------------------------------


class Backend(Protocol):
    name: str
    control: Path
    log: Path

    def put(self, trial: int, gen: Generated, reference: bool = False) -> Any: ...
    def rule_path(self, where: Any, target: str, exact: bool) -> str: ...
    def rule_extra(self, where: Any) -> dict[str, Any]: ...
    def janitor_args(self, where: Any, faulty: bool) -> tuple[list[str], dict[str, str]]: ...
    def files_after(self, where: Any) -> set[str]: ...
    def drop(self, where: Any) -> None: ...


class FsBackend:
    """Stores as directories below one faultfs mount, one per trial."""

    name = "filesystem"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.source = work / "source"
        self.mount = work / "mnt"
        self.control = work / "control.json"
        self.log = work / "faults.jsonl"
        self.source.mkdir(parents=True, exist_ok=True)
        write_control(self.control, [])

    @contextlib.contextmanager
    def running(self) -> Iterator[FsBackend]:
        with faultfs.mounted(self.source, self.mount, self.control, self.log):
            yield self

    def put(self, trial: int, gen: Generated, reference: bool = False) -> Path:
        """The generated store, moved below the mount (one rename, mtimes kept)."""
        where = (self.work / "reference" if reference else self.source) / f"t{trial}"
        where.parent.mkdir(parents=True, exist_ok=True)
        gen.root.rename(where)
        gen.root = where
        return where

    def rule_path(self, where: Path, target: str, exact: bool) -> str:
        below = f"/{where.name}/{target}"
        return "^" + re.escape(below) + ("$" if exact else "(/|$)")

    def rule_extra(self, where: Path) -> dict[str, Any]:
        return {}

    def janitor_args(self, where: Path, faulty: bool) -> tuple[list[str], dict[str, str]]:
        data = self.mount / where.name if faulty else where
        lock = self.work / f"{where.name}.lock"
        return ["--data-dir", str(data), "--lock-file", str(lock)], {}

    def files_after(self, where: Path) -> set[str]:
        return faultstore.files_below(where)

    def drop(self, where: Path) -> None:
        shutil.rmtree(where, ignore_errors=True)


class S3Backend:
    """A bucket per trial on the RADOS Gateway, the janitor talking to it through the proxy."""

    name = "s3"
    ROOT = "registry"

    def __init__(self, work: Path, gateway: Any) -> None:
        self.work = work
        self.gateway = gateway
        self.control = work / "control.json"
        self.log = work / "faults.jsonl"
        self.data_dir = work / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_control(self.control, [])
        self.proxy = FaultProxy(gateway.endpoint, self.control, self.log)

    @contextlib.contextmanager
    def running(self) -> Iterator[S3Backend]:
        with self.proxy:
            yield self

    def put(self, trial: int, gen: Generated, reference: bool = False) -> str:
        """The store as a new bucket. S3 has no utime: every object is uploaded now and
        carries its date in the metadata the janitor's own copies carry (s3.py, "Hold without
        rename": stat answers it, and a caller that lists an object young stats it first).
        Dating objects for real (rgw.age, the gateway's clock set back per distinct time)
        took most of a trial's time."""
        from registry_janitor.s3 import MTIME_META

        bucket = self.gateway.bucket(f"fault-{trial}{'-ref' if reference else ''}", self.ROOT)
        s3 = self.gateway.client()

        def one(path: str) -> None:
            local = gen.root / path
            # Young objects too: uploaded now, two of them could land in different seconds
            # and turn a tie in push time (which the tag names break) into an order.
            meta = {MTIME_META: str(int(local.stat().st_mtime))}
            s3.put_object(
                Bucket=bucket.name, Key=f"{self.ROOT}/{path}", Body=local.read_bytes(),
                Metadata=meta,
            )  # fmt: skip

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, sorted(faultstore.files_below(gen.root))))
        return str(bucket.name)

    def rule_path(self, where: str, target: str, exact: bool) -> str:
        key = f"{self.ROOT}/{target}"
        # A listing's prefix ends with "/"; a "directory" is every key below it.
        return "^" + re.escape(key) + ("/?$" if exact else "(/|$)")

    def rule_extra(self, where: str) -> dict[str, Any]:
        return {"bucket": where}

    def janitor_args(self, where: str, faulty: bool) -> tuple[list[str], dict[str, str]]:
        from rgw import ACCESS_KEY, REGION, SECRET_KEY

        endpoint = self.proxy.endpoint if faulty else self.gateway.endpoint
        args = ["--data-dir", str(self.data_dir), "--storage", "s3", "--s3-endpoint", endpoint,
                "--s3-bucket", where, "--s3-root-directory", self.ROOT, "--s3-region", REGION,
                "--lock-file", str(self.work / f"{where}.lock")]  # fmt: skip
        return args, {"JANITOR_S3_ACCESS_KEY": ACCESS_KEY, "JANITOR_S3_SECRET_KEY": SECRET_KEY}

    def files_after(self, where: str) -> set[str]:
        prefix = f"{self.ROOT}/"
        return {k[len(prefix) :] for k in self.gateway.objects(where, prefix)}

    def drop(self, where: str) -> None:
        s3 = self.gateway.client()
        keys = list(self.gateway.objects(where))
        for i in range(0, len(keys), 1000):
            s3.delete_objects(
                Bucket=where,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        s3.delete_bucket(Bucket=where)


# -- one trial ----------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def reported(self) -> bool:
        """Did the run say something went wrong: exit status, an error event, a metric?"""
        return (
            self.returncode != 0
            or any(
                e.get("event") in REPORTED_EVENTS or e.get("level") in ("error", "critical")
                for e in self.events
            )
            or any(
                bad(self.metrics[m]) for m, bad in REPORTING_METRICS.items() if m in self.metrics
            )
        )


def read_metrics(path: Path) -> dict[str, float]:
    """`name value` lines of a Prometheus textfile (samples with labels left out)."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if line and not line.startswith("#") and "{" not in name:
                out[name] = float(value)
    return out


def run_janitor(args: list[str], env: dict[str, str], triggers: dict[str, Path]) -> Run:
    """The CLI as the deployment runs it; creates a trigger file when its event comes."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "GC_"))}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    base.pop("AWS_CA_BUNDLE", None)
    base["JANITOR_TEST_SETTLE_FLOOR"] = "0"  # allows GC_SETTLE 0 (SETTLE above says why)
    cmd = [sys.executable, "-m", "registry_janitor", "sweep", "--run-once", "--json",
           "--gc-settle", SETTLE, *args]  # fmt: skip
    events: list[dict[str, Any]] = []
    t0 = time.monotonic()
    metrics = Path(tempfile.mkdtemp(prefix="fault-metrics-")) / "janitor.prom"
    cmd += ["--metrics-file", str(metrics)]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env={**base, **env}
        )
        assert proc.stdout is not None

        def read() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                events.append(event)
                trigger = triggers.get(str(event.get("event")))
                if trigger is not None:
                    trigger.touch()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            proc.wait(JANITOR_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(30)
        err.seek(0)
        stderr = err.read()
    seconds = time.monotonic() - t0
    keep = os.environ.get("FAULT_TRIALS_KEEP_OUTPUT")  # a directory: each run's output there
    if keep:
        out = Path(keep) / f"run-{time.time_ns()}"
        out.mkdir(parents=True)
        (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        (out / "stderr").write_text(stderr)
        (out / "command").write_text(" ".join(cmd))
    values = read_metrics(metrics)
    shutil.rmtree(metrics.parent, ignore_errors=True)
    return Run(proc.returncode, events, stderr, seconds, values)


@dataclass
class Result:
    backend: str
    trial: int
    seed: int
    faults: list[str]
    fired: int
    fired_rules: list[str]
    returncode: int
    reported: bool
    blobs_deleted: int
    wrongly_deleted: list[str]
    left_held: list[str]
    unlinked: list[str]
    unreported_change: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: store, run, reference
    error_messages: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(
            self.wrongly_deleted or self.left_held or self.unlinked or self.unreported_change
        )

    def line(self) -> str:
        verdict = "FAIL" if self.failed else "ok"
        parts = [
            f"{self.backend} trial {self.trial} seed {self.seed}: {verdict}",
            f"faults {len(self.faults)} fired {self.fired}",
            f"exit {self.returncode}{' reported' if self.reported else ''}",
            f"blobs deleted {self.blobs_deleted} wrongly {len(self.wrongly_deleted)}",
        ]
        if self.left_held:
            parts.append(f"left held {len(self.left_held)}")
        if self.unlinked:
            parts.append(f"revisions unlinked {len(self.unlinked)}")
        if self.unreported_change:
            parts.append(f"unreported change ({len(self.unreported_change)} files)")
        parts.append(
            f"{self.seconds:.1f} s ({' '.join(f'{k} {v}' for k, v in self.phases.items())})"
        )
        return ", ".join(parts) + "\n    " + "\n    ".join(self.faults)


def trial_seed(seed: int, trial: int) -> int:
    return seed * 100_003 + trial


def run_trial(backend: Any, trial: int, seed: int, work: Path,
              scenario: Callable[[Generated], list[Fault]] | None = None) -> Result:  # fmt: skip
    """One trial; `scenario` gives the faults instead of the random plan."""
    t0 = time.monotonic()
    s = trial_seed(seed, trial)
    rng = random.Random(f"plan {s}")  # not the store's own sequence (same seed)
    tmp = work / f"gen-{backend.name}-{trial}"
    shutil.rmtree(tmp, ignore_errors=True)
    gen = faultstore.generate(tmp, s)
    faults = plan(rng, gen, backend.name) if scenario is None else scenario(gen)
    # What the store held before the run: every path, and the links and manifests read.
    before = faultstore.files_below(gen.root)
    contents = {p: (gen.root / p).read_bytes() for p in faultstore.readable(before)}
    where = backend.put(trial, gen)
    t_store = time.monotonic() - t0
    triggers = {e: work / f"trigger-{backend.name}-{trial}-{e}" for e in TRIGGERS}
    for t in triggers.values():
        t.unlink(missing_ok=True)
    rules = [
        {
            "id": f"f{i}",
            "ops": [f.op],
            "path": backend.rule_path(where, f.target, f.exact),
            "fault": f.fault,
            "nth": f.nth,
            "times": f.times,
            "probability": f.probability,
            "seed": s + i,
            "after": str(triggers[f.after]) if f.after else None,
            **backend.rule_extra(where),
        }
        for i, f in enumerate(faults)
    ]
    log_start = backend.log.stat().st_size if backend.log.exists() else 0
    write_control(backend.control, rules)
    args, env = backend.janitor_args(where, faulty=True)
    run = run_janitor([*args, "--keep-last-n", str(gen.keep_last_n)], env, triggers)
    write_control(backend.control, [])
    fired = read_log(backend.log, log_start)
    after = backend.files_after(where)
    # Held blobs an error names (a delete or a put-back that failed): reported, and the next
    # run finishes the job.
    named = frozenset(
        h
        for e in run.events
        if e.get("level") in ("error", "critical")
        for h in HEX.findall(f"{e.get('message')} {e.get('digest', '')}")
    )
    dmg = faultstore.damage(before, contents.__getitem__, after, named)
    result = Result(
        backend.name, trial, s, [str(f) for f in faults], len(fired),
        sorted({str(f["rule"]) for f in fired}), run.returncode, run.reported,
        dmg.blobs_deleted, dmg.wrongly_deleted, dmg.left_held, dmg.unlinked,
        error_messages=[str(e.get("message")) for e in run.events
                        if e.get("level") in ("error", "warning")][:5],
    )  # fmt: skip
    fired_faults = [faults[int(r[1:])] for r in result.fired_rules]
    if fired and not run.reported and any(f.fault != "ENOENT" for f in fired_faults):
        # Faults fired and the run says all went well: it must have done what a run
        # without faults does.
        t_ref = time.monotonic()
        # The same store again (the generator is deterministic but for "now").
        ref_gen = faultstore.generate(work / f"gen-{backend.name}-{trial}-ref", s)
        ref = backend.put(trial, ref_gen, reference=True)
        ref_args, ref_env = backend.janitor_args(ref, faulty=False)
        ref_run = run_janitor([*ref_args, "--keep-last-n", str(gen.keep_last_n)], ref_env, {})
        if ref_run.returncode != 0:
            raise RuntimeError(f"trial {trial}: the reference run failed: {ref_run.stderr[-2000:]}")
        ref_after = faultstore.docker_files(backend.files_after(ref))
        mine = faultstore.docker_files(after)
        result.unreported_change = sorted(mine ^ ref_after)
        backend.drop(ref)
        shutil.rmtree(ref_gen.root, ignore_errors=True)
        result.phases["reference"] = round(time.monotonic() - t_ref, 1)
    backend.drop(where)
    shutil.rmtree(tmp, ignore_errors=True)
    for t in triggers.values():
        t.unlink(missing_ok=True)
    result.seconds = time.monotonic() - t0
    result.phases.update(store=round(t_store, 1), run=round(run.seconds, 1))
    return result


# -- summary -------------------------------------------------------------------------------


@dataclass
class Summary:
    backend: str
    trials: int = 0
    faults: int = 0
    fired: int = 0
    trials_fired: int = 0
    reported: int = 0
    blobs_deleted: int = 0
    wrongly_deleted: int = 0
    left_held: int = 0
    unlinked: int = 0
    unreported: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, r: Result) -> None:
        self.trials += 1
        self.faults += len(r.faults)
        self.fired += r.fired
        self.trials_fired += bool(r.fired)
        self.reported += r.reported
        self.blobs_deleted += r.blobs_deleted
        self.wrongly_deleted += len(r.wrongly_deleted)
        self.left_held += len(r.left_held)
        self.unlinked += len(r.unlinked)
        self.unreported += bool(r.unreported_change)
        if r.failed:
            self.failed.append(f"{r.trial} (seed {r.seed})")

    def text(self) -> str:
        return (
            f"{self.backend}: {self.trials} trials, {self.faults} faults injected,"
            f" {self.fired} fired (in {self.trials_fired} trials), {self.reported} runs reported"
            f" an error, {self.blobs_deleted} blobs deleted, {self.wrongly_deleted} wrongly"
            f" deleted, {self.left_held} entries left held, {self.unlinked} needed revisions"
            f" unlinked, {self.unreported} unreported outcome changes;"
            f" {len(self.failed)} trials failed{': ' + ', '.join(self.failed) if self.failed else ''};"
            f" {self.seconds:.0f} s"
        )


def summarize(files: list[Path]) -> int:
    """The summary of runs split over several processes (their --results files)."""
    summaries: dict[str, Summary] = {}
    seen: set[tuple[str, int]] = set()
    for path in files:
        for line in path.read_text().splitlines():
            r = Result(**json.loads(line))
            if (r.backend, r.trial) in seen:
                continue  # run twice (ranges that overlap): the first result counts
            seen.add((r.backend, r.trial))
            summaries.setdefault(r.backend, Summary(r.backend)).add(r)
            summaries[r.backend].seconds += r.seconds
    for summary in summaries.values():
        print(summary.text().rsplit(";", 1)[0] + f"; {summary.seconds:.0f} s of trials")
    return 1 if any(s.failed for s in summaries.values()) else 0


@contextlib.contextmanager
def backend_for(name: str, work: Path) -> Iterator[Any]:
    if name == "filesystem":
        with FsBackend(work / "fs").running() as fs:
            yield fs
        return
    import rgw

    missing = rgw.missing()
    if missing:
        raise SystemExit(f"fault trials on s3 need: {missing}")
    with rgw.running(work / "rgw") as gateway, S3Backend(work / "s3", gateway).running() as s3:
        yield s3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("filesystem", "s3", "both"), default="both")
    p.add_argument("--trials", type=int, default=500, help="per backend")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", type=int, default=0, help="the first trial number (to split a run)")
    p.add_argument("--only", type=int, action="append", help="run only this trial (repeatable)")
    p.add_argument(
        "--summarize", type=Path, nargs="+", help="only print the summary of these --results files"
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), help="these faults, not random ones")
    p.add_argument("--workdir", type=Path, help="default: a temporary directory")
    p.add_argument("--results", type=Path, help="write every trial's result here (JSON lines)")
    a = p.parse_args(argv)
    if a.summarize:
        return summarize(a.summarize)
    # SIGTERM unwinds like Ctrl-C: the mount is unmounted and the gateway stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backends = ("filesystem", "s3") if a.backend == "both" else (a.backend,)
    summaries = []
    with contextlib.ExitStack() as stack:
        work = a.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        out = stack.enter_context(a.results.open("w")) if a.results else None
        for name in backends:
            t0 = time.monotonic()
            summary = Summary(name)
            with backend_for(name, work) as backend:
                for trial in a.only or range(a.start, a.start + a.trials):
                    scenario = SCENARIOS[a.scenario].get(name) if a.scenario else None
                    r = run_trial(backend, trial, a.seed, work, scenario)
                    summary.add(r)
                    print(r.line(), flush=True)
                    if out is not None:
                        out.write(json.dumps(asdict(r)) + "\n")
                        out.flush()
            summary.seconds = time.monotonic() - t0
            summaries.append(summary)
            print(summary.text(), flush=True)
    print("\n".join(s.text() for s in summaries))
    return 1 if any(s.failed for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
