"""Where the janitor's plan spends its time.

``phases``: runs the janitor CLI in this process with timers around its phases (store scan,
planning, applying/logging decisions). The phase functions are looked up by name and skipped
when the janitor no longer has them, so this keeps working while the janitor changes.

``pyspy``: samples the plan with py-spy (all threads) and aggregates the raw stacks into the
functions with the most samples, self and inclusive.

    python3 bench/profile_plan.py phases -- prune --dry-run --run-once --data-dir STORE
    python3 bench/profile_plan.py pyspy OUT.raw -- prune --dry-run --run-once --data-dir STORE
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

PHASES = (
    ("registry_janitor.store", None, "scan"),
    ("registry_janitor.sweep", None, "plan_all"),
    ("registry_janitor.manifests", "ManifestReader", "read_many"),
    ("registry_janitor.sweep", "Janitor", "_apply"),
)


def phases(janitor_args: list[str]) -> dict[str, float]:
    import importlib

    totals: dict[str, float] = {}

    def wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return timed

    for module_name, cls_name, fn_name in PHASES:
        try:
            mod = importlib.import_module(module_name)
            owner = getattr(mod, cls_name) if cls_name else mod
            fn = getattr(owner, fn_name)
        except (ImportError, AttributeError):
            continue
        label = f"{cls_name + '.' if cls_name else ''}{fn_name}"
        setattr(owner, fn_name, wrap(fn, label))
    cli = importlib.import_module("registry_janitor.cli")
    start = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        cli.main(janitor_args)
    totals["total"] = time.perf_counter() - start
    return {k: round(v, 3) for k, v in totals.items()}


def aggregate(raw: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        self_c[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / max(total, 1), 3)) for k, v in c.most_common(top)]

    return {"self": share(self_c), "inclusive": share(incl)}


def pyspy(raw: Path, cmd: list[str]) -> dict[str, list[tuple[str, float]]]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    full = [exe, "record", "-o", str(raw), "--format", "raw", "-r", "100", "--nonblocking", "--"]
    subprocess.run(full + cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return aggregate(raw)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    mode, rest = argv[0], argv[1:]
    if mode == "phases":
        args = rest[1:] if rest[:1] == ["--"] else rest
        print(json.dumps(phases(args)))
        return 0
    if mode == "pyspy":
        raw, args = Path(rest[0]), rest[1:]
        args = args[1:] if args[:1] == ["--"] else args
        janitor = str(Path(sys.executable).parent / "registry-janitor")
        print(json.dumps(pyspy(raw, [janitor, *args]), indent=1))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
