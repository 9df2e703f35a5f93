"""The timed contenders, each run as a child process, and how they are measured.

- ``plan``: the janitor's dry-run plan, ``registry-janitor prune --dry-run --run-once``;
- ``sweep``: ``registry-janitor sweep --run-once`` (prune, unlink unreachable revisions,
  plain ``garbage-collect``);
- ``plain``: the plain recipe (``plain_recipe.py``: delete tag directories beyond the newest N,
  then ``garbage-collect --delete-untagged``);
- ``find``: the lower bound for the plan, a ``find`` walk over exactly the directories the plan
  must list, printing the mtime of every tag's ``current/link`` (see :func:`find_bound_cmd`).

Wall time is taken around the child; peak memory is ``/usr/bin/time``'s maximum resident set
size of the child (a parent's rusage for children is the largest descendant, so for the sweep
and the plain recipe the registry's GC is recorded separately through a wrapper script).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from store import V2

HERE = Path(__file__).resolve().parent
REGISTRY_BIN = "/usr/bin/docker-registry"
TIME_BIN = "/usr/bin/time"
JANITOR_DEFAULT_CONCURRENCY = 8

# Syscalls that touch the filesystem, for the per-tag counts (strace -c of %file and %desc,
# minus the ones that only move output or manage memory/processes).
NOT_FS = {
    "write",
    "writev",
    "pwrite64",
    "mmap",
    "munmap",
    "mprotect",
    "pipe2",
    "dup",
    "dup2",
    "dup3",
    "ioctl",
    "poll",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_create1",
    "eventfd2",
    "fcntl",
    "execve",
    "wait4",
    "clone3",
    "clone",
    "vfork",
    "socket",
    "connect",
    "sendto",
    "recvfrom",
}


@dataclass
class Result:
    name: str
    wall_s: float
    max_rss_kb: int = 0
    returncode: int = 0
    gc_wall_s: float = 0.0
    gc_max_rss_kb: int = 0
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def janitor_bin() -> str:
    """``registry-janitor`` next to this Python (the bench venv) or on PATH."""
    cand = Path(sys.executable).parent / "registry-janitor"
    if cand.exists():
        return str(cand)
    found = shutil.which("registry-janitor")
    if not found:
        raise FileNotFoundError("registry-janitor not installed (pip install -e files/janitor)")
    return found


def write_registry_config(
    path: Path, store: Path, addr: str = "127.0.0.1:0", readonly: bool = False
) -> Path:
    ro = "  maintenance:\n    readonly:\n      enabled: true\n" if readonly else ""
    path.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {store}\n"
        "  delete:\n    enabled: true\n"
        f"{ro}"
        f"http:\n  addr: {addr}\n"
    )
    return path


def write_gc_wrapper(path: Path, log: Path) -> Path:
    """A registry binary that records wall time and max RSS of every invocation in ``log``."""
    path.write_text(f"#!/bin/sh\nexec {TIME_BIN} -a -o {log} -f '%e %M' {REGISTRY_BIN} \"$@\"\n")
    path.chmod(0o755)
    return path


def read_gc_log(log: Path) -> tuple[float, int]:
    """(total wall s, max RSS kB) over the GC runs recorded by the wrapper."""
    if not log.exists():
        return 0.0, 0
    wall, rss = 0.0, 0
    for line in log.read_text().splitlines():
        m = re.fullmatch(r"([0-9.]+) ([0-9]+)", line.strip())
        if m:
            wall += float(m.group(1))
            rss = max(rss, int(m.group(2)))
    return wall, rss


def plan_cmd(store: Path, lock: Path, keep: int, concurrency: int | None = None) -> list[str]:
    cmd = [janitor_bin(), "prune", "--dry-run", "--run-once", "--data-dir", str(store)]
    cmd += ["--keep-last-n", str(keep), "--lock-file", str(lock)]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency)]
    return cmd


def sweep_cmd(
    store: Path,
    lock: Path,
    keep: int,
    config: Path,
    registry_bin: Path,
    metrics: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The janitor's sweep with its own GC (GC_ENGINE=janitor, the default). GC_SETTLE=0:
    the settle period is a fixed wait, not work; it is reported on its own."""
    cmd = [
        janitor_bin(),
        "sweep",
        "--run-once",
        "--no-dry-run",
        "--data-dir",
        str(store),
        "--keep-last-n",
        str(keep),
        "--lock-file",
        str(lock),
        "--registry-config",
        str(config),
        "--registry-bin",
        str(registry_bin),
        "--gc-settle",
        "0",
        *extra,
    ]
    return cmd + (["--metrics-file", str(metrics)] if metrics else [])


def prune_cmd(store: Path, lock: Path, keep: int) -> list[str]:
    """A real prune, no GC, every unreachable revision unlinked now (REVISION_GRACE=0): what
    both GC contenders then start from."""
    return [
        janitor_bin(),
        "prune",
        "--run-once",
        "--no-dry-run",
        "--data-dir",
        str(store),
        "--keep-last-n",
        str(keep),
        "--revision-grace",
        "0",
        "--lock-file",
        str(lock),
    ]


def janitor_gc_cmd(
    store: Path, lock: Path, config: Path, metrics: Path, concurrency: int | None = None
) -> list[str]:
    """``registry-janitor gc``: the janitor's collection alone, GC_SETTLE=0."""
    cmd = [janitor_bin(), "gc", "--run-once", "--data-dir", str(store), "--gc-settle", "0"]
    cmd += ["--lock-file", str(lock), "--registry-config", str(config)]
    cmd += ["--metrics-file", str(metrics)]
    return cmd + (["--concurrency", str(concurrency)] if concurrency else [])


def stock_gc_cmd(config: Path, registry_bin: str = REGISTRY_BIN) -> list[str]:
    """The registry's own garbage-collect, without --delete-untagged."""
    return [registry_bin, "garbage-collect", str(config)]


def read_metrics(path: Path) -> dict[str, float]:
    """The janitor's Prometheus textfile: name (with labels) -> value."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.removeprefix("registry_janitor_")] = float(value)
    return out


def plain_recipe_cmd(store: Path, keep: int, config: Path, registry_bin: Path) -> list[str]:
    return [
        sys.executable,
        str(HERE / "plain_recipe.py"),
        str(store),
        "--keep-last-n",
        str(keep),
        "--registry-config",
        str(config),
        "--registry-bin",
        str(registry_bin),
    ]


def find_bound_cmd(store: Path) -> list[str]:
    """The honest minimal walk: list every directory on the way to each tag's link and stat
    the link, but never descend where the plan's tag scan need not go: ``_layers``,
    ``_uploads``, ``_manifests/revisions`` and each tag's ``index/`` history. (A bare
    ``find -path '*/_manifests/tags/*/current/link'`` would also walk all those.)"""
    repos = store / V2 / "repositories"
    return [
        "find",
        str(repos),
        "(",
        "-name",
        "_layers",
        "-o",
        "-name",
        "_uploads",
        "-o",
        "-path",
        "*/_manifests/revisions",
        "-o",
        "-path",
        "*/_manifests/tags/*/index",
        ")",
        "-prune",
        "-o",
        "-path",
        "*/_manifests/tags/*/current/link",
        "-printf",
        "%T@ %p\\n",
    ]


def run_timed(
    name: str,
    cmd: Sequence[str],
    out: Path,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> Result:
    """Run ``cmd`` under /usr/bin/time; stdout+stderr go to ``out``."""
    rss_file = out.with_suffix(".rss")
    full = [TIME_BIN, "-o", str(rss_file), "-f", "%M", *cmd]
    merged = {**os.environ, **(env or {})}
    with open(out, "wb") as f:
        start = time.perf_counter()
        proc = subprocess.run(full, check=False, stdout=f, stderr=subprocess.STDOUT, env=merged)
        wall = time.perf_counter() - start
    rss = 0
    for line in rss_file.read_text().splitlines():
        if line.strip().isdigit():
            rss = int(line.strip())
    if check and proc.returncode != 0:
        tail = out.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} exited {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return Result(name, wall, rss, proc.returncode)


def best_of(n: int, name: str, cmd: Sequence[str], out: Path) -> Result:
    """Read-only contenders: the fastest of ``n`` runs (warm cache for all of them)."""
    results = [run_timed(name, cmd, out) for _ in range(max(1, n))]
    best = min(results, key=lambda r: r.wall_s)
    best.extra["runs_s"] = [round(r.wall_s, 3) for r in results]
    return best


def strace_counts(cmd: Sequence[str], out: Path) -> dict[str, int]:
    """Syscall counts (all threads and children) of ``cmd`` for file-name and fd syscalls."""
    counts_file = out.with_suffix(".strace")
    full = ["strace", "-f", "-c", "-U", "name,calls", "-o", str(counts_file)]
    full += ["-e", "trace=%file,%desc", *cmd]
    with open(out, "wb") as f:
        subprocess.run(full, stdout=f, stderr=subprocess.STDOUT, check=True)
    counts: dict[str, int] = {}
    for line in counts_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "-"):
            counts[parts[0]] = int(parts[1])
    return counts


def fs_syscalls(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k not in NOT_FS}
