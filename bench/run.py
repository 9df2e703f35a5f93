"""Benchmarks of the janitor against a plain recipe (bench/plain_recipe.py), the registry's
own garbage-collect, ``rm -rf`` and a ``find`` lower bound.

    python3 bench/run.py [--size full|smoke] [--only plan,strace,sweep,growth,slowfs,...]

The parts of the janitor's own garbage collection (gc-slowfs, sweep-slowfs, gc-local, window,
gc-growth) are in bench/gcbench.py.

Stores are generated once into ``--cache`` (default /var/tmp/registry-cache-bench) and copied
with ``cp -a`` for every run that changes a store; read-only runs (the plan, the find bound)
use the cached store itself. Prints one table and writes it, with every raw figure, to
``<cache>/results-<size>.{json,md}``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import check
import contenders as C
import gcbench
import profile_plan
import report as R
import slowfs
from store import StoreSpec, cached_store, copy_store, remove_tree

# GC_SETTLE=0 in timed runs (the settle period is a fixed wait, not work): below the floor
# production enforces (registry_janitor.config.SETTLE_FLOOR).
os.environ.setdefault("JANITOR_TEST_SETTLE_FLOOR", "0")

PARTS = ("plan", "strace", "sweep", "growth", "slowfs")
GC_PARTS = ("gc-slowfs", "sweep-slowfs", "gc-local", "window", "gc-growth")
OPTIONAL_PARTS = ("profile", "keepmany")  # run only when named in --only
SIZES: dict[str, dict[str, StoreSpec]] = {
    "full": {
        "a": StoreSpec("a", 1000, 100),
        "b": StoreSpec("b", 20, 1000),
        "c": StoreSpec("c", 20, 1000, "index"),
        "half": StoreSpec("b-half", 20, 500),
        "slow": StoreSpec("slow", 30, 50),
    },
    "smoke": {
        "a": StoreSpec("a", 20, 25),
        "b": StoreSpec("b", 3, 60),
        "c": StoreSpec("c", 3, 40, "index"),
        "half": StoreSpec("b-half", 3, 30),
        "slow": StoreSpec("slow", 5, 8),
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.size: str = args.size
        self.smoke = self.size == "smoke"
        self.specs = SIZES[self.size]
        self.keep: int = args.keep_last_n
        self.repeat: int = args.repeat
        self.latency_ms: float = args.latency_ms
        self.gc_concurrency: int | None = args.gc_concurrency
        self.stock_max_tags: int | None = args.stock_max_tags
        self.cache = Path(args.cache)
        self.work = self.cache / "work"
        self.results: dict[str, object] = {}
        self.rows: list[R.Row] = []

    # -- helpers -----------------------------------------------------------------------
    def store(self, key: str) -> Path:
        return cached_store(self.cache / "stores", self.specs[key])

    def fresh_copy(self, key: str, label: str) -> Path:
        src = self.store(key)
        dest = self.work / f"{key}-{label}"
        start = time.perf_counter()
        copy_store(src, dest, sync=not self.smoke, hardlinks=self.smoke)
        log(f"  copied {self.specs[key].name} for {label} in {time.perf_counter() - start:.1f} s")
        return dest

    def out(self, name: str) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work / f"{name}.out"

    def lock(self) -> Path:
        return self.work / "janitor.lock"

    def log_line(self, msg: str) -> None:
        log(msg)

    # -- parts -------------------------------------------------------------------------
    def plan(self, key: str = "a") -> tuple[C.Result, C.Result]:
        spec = self.specs[key]
        root = self.store(key)
        log(f"plan vs find bound on store {key} ({spec.repos} x {spec.tags})")
        find = C.best_of(self.repeat, "find", C.find_bound_cmd(root), self.out(f"find-{key}"))
        found = self.out(f"find-{key}").read_bytes().count(b"\n")
        if found != spec.total_tags:
            raise RuntimeError(f"find bound saw {found} links, expected {spec.total_tags}")
        plan_out = self.out(f"plan-{key}")
        plan = C.best_of(self.repeat, "plan", C.plan_cmd(root, self.lock(), self.keep), plan_out)
        plan.extra["summary"] = _last_line(plan_out)
        log(f"  find {find.wall_s:.2f} s, plan {plan.wall_s:.2f} s: {plan.extra['summary']}")
        self.results[f"plan_{key}"] = asdict(plan)
        self.results[f"find_{key}"] = asdict(find)
        return plan, find

    def strace(self, key: str = "a") -> dict[str, dict[str, int]]:
        spec = self.specs[key]
        root = self.store(key)
        log(f"strace -f -c: plan and find bound on store {key}")
        out = {}
        for name, cmd in (
            ("plan", C.plan_cmd(root, self.lock(), self.keep)),
            ("find", C.find_bound_cmd(root)),
        ):
            counts = C.fs_syscalls(C.strace_counts(cmd, self.out(f"strace-{name}-{key}")))
            out[name] = counts
            total = sum(counts.values())
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
            log(f"  {name}: {total / spec.total_tags:.2f} fs syscalls per tag; top {top}")
        self.results[f"strace_{key}"] = out
        return out

    def sweep_vs_plain(
        self, key: str, keep: int | None = None
    ) -> tuple[C.Result, C.Result, check.CheckResult, check.CheckResult]:
        spec = self.specs[key]
        log(
            f"sweep vs plain recipe on store {key} ({spec.repos} x {spec.tags}, {spec.kind}),"
            f" keep {keep or self.keep}"
        )
        plain = self._mutating(key, "plain", keep)
        plain_check = self._last_check
        sweep = self._mutating(key, "sweep", keep)
        sweep_check = self._last_check
        return sweep, plain, sweep_check, plain_check

    _last_check: check.CheckResult

    def _mutating(self, key: str, which: str, keep: int | None = None) -> C.Result:
        spec = self.specs[key]
        keep = keep or self.keep
        tag = f"{key}-keep{keep}" if keep != self.keep else key
        root = self.fresh_copy(key, which)
        cfg = C.write_registry_config(self.work / f"registry-{key}-{which}.yml", root)
        gc_log = self.work / f"gc-{key}-{which}.log"
        if gc_log.exists():
            gc_log.unlink()
        wrapper = C.write_gc_wrapper(self.work / f"registry-{key}-{which}", gc_log)
        metrics = self.work / f"metrics-{key}-{which}.prom"
        metrics.unlink(missing_ok=True)
        if which == "plain":
            cmd = C.plain_recipe_cmd(root, keep, cfg, wrapper)
        else:
            cmd = C.sweep_cmd(root, self.lock(), keep, cfg, wrapper, metrics)
        try:
            res = C.run_timed(which, cmd, self.out(f"{which}-{tag}"))
            res.gc_wall_s, res.gc_max_rss_kb = C.read_gc_log(gc_log)
            if which == "sweep":
                # The janitor's own GC (GC_ENGINE=janitor) runs inside its process.
                values = C.read_metrics(metrics)
                res.extra["metrics"] = values
                res.gc_wall_s = values.get("gc_duration_seconds", 0.0)
            res.extra["summary"] = _last_line(self.out(f"{which}-{tag}"))
            chk = check.check_store(root, spec, keep)
        finally:
            remove_tree(root)
        self._last_check = chk
        res.extra["check"] = asdict(chk)
        log(
            f"  {which}: {res.wall_s:.2f} s (GC {res.gc_wall_s:.2f} s), rss {res.max_rss_kb} kB,"
            f" GC rss {res.gc_max_rss_kb} kB; kept {chk.tags_present}/{chk.tags_expected},"
            f" broken {chk.broken_tags}, retention mismatches {chk.retention_mismatch},"
            f" blobs left {chk.blobs}"
        )
        self.results[f"{which}_{tag}"] = asdict(res)
        return res

    def sweep_only(self, key: str) -> C.Result:
        log(f"sweep on store {key} (peak memory)")
        return self._mutating(key, "sweep")

    def slow(self) -> dict[str, object]:
        key = "slow"
        spec = self.specs[key]
        log(
            f"plan on slowfs ({self.latency_ms:g} ms per operation) over store {key}"
            f" ({spec.repos} x {spec.tags})"
        )
        root = self.fresh_copy(key, "slowfs")
        mnt = self.work / "slowfs-mnt"
        res: dict[str, object] = {"latency_ms": self.latency_ms, "tags": spec.total_tags}
        try:
            # The layer's own efficiency: a client without overhead, same mount options.
            for label, conc in (("calib-c1", 1), ("calib-default", C.JANITOR_DEFAULT_CONCURRENCY)):
                stats = self.work / f"slowfs-{label}.json"
                with slowfs.mounted(root, mnt, self.latency_ms, stats, sys.executable):
                    wall, _tags = slowfs.calibrate(root, mnt, conc)
                ops = sum(slowfs.read_stats(stats).values())
                bound = ops * self.latency_ms / 1000.0 / conc
                res[label] = {
                    "wall_s": wall,
                    "ops": ops,
                    "concurrency": conc,
                    "model_bound_s": bound,
                }
                log(
                    f"  calibration, concurrency {conc}: {wall:.2f} s for {ops} ops,"
                    f" model bound {bound:.2f} s ({wall / bound:.2f}x)"
                )
            for label, conc in (("c1", 1), ("default", None)):
                stats = self.work / f"slowfs-{label}.json"
                with slowfs.mounted(root, mnt, self.latency_ms, stats, sys.executable):
                    cmd = C.plan_cmd(mnt, self.work / "janitor-slow.lock", self.keep, conc)
                    r = C.run_timed(f"plan-slowfs-{label}", cmd, self.out(f"plan-slowfs-{label}"))
                counts = slowfs.read_stats(stats)
                ops = sum(counts.values())
                c = conc or C.JANITOR_DEFAULT_CONCURRENCY
                bound = ops * self.latency_ms / 1000.0 / c
                res[label] = {
                    "wall_s": r.wall_s,
                    "ops": ops,
                    "ops_by_kind": counts,
                    "concurrency": c,
                    "model_bound_s": bound,
                    "summary": _last_line(self.out(f"plan-slowfs-{label}")),
                }
                log(
                    f"  concurrency {c}: {r.wall_s:.2f} s, {ops} ops"
                    f" ({ops / spec.total_tags:.2f}/tag), model bound {bound:.2f} s; {counts}"
                )
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            remove_tree(root)
        self.results["slowfs"] = res
        return res

    def profile(self, key: str = "a") -> dict[str, float]:
        root = self.store(key)
        log(f"profile: plan phases on store {key}")
        args = C.plan_cmd(root, self.lock(), self.keep)[1:]
        ph = profile_plan.phases(args)
        log(f"  phases (s): {ph}")
        self.results[f"profile_phases_{key}"] = ph
        if shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists():
            top = profile_plan.pyspy(
                self.work / f"pyspy-plan-{key}.raw", C.plan_cmd(root, self.lock(), self.keep)
            )
            self.results[f"profile_pyspy_{key}"] = top
            for k, v in top["inclusive"][:30]:
                log(f"  {v:6.1%} {k}")
        return ph

    # -- the whole run ---------------------------------------------------------------
    def run(self, parts: list[str]) -> list[R.Row]:
        rows = self.rows
        sp = self.specs
        a, b, c = sp["a"], sp["b"], sp["c"]
        la = f"store (a) {a.repos}x{a.tags}"
        lb = f"store (b) {b.repos}x{b.tags}"
        lc = f"store (c) {c.repos}x{c.tags} index"
        plan_b = sweep_b = None
        if "plan" in parts:
            plan, find = self.plan("a")
            rows.append(R.Row(f"{la}: find bound", R.secs(find.wall_s)))
            rows.append(R.Row(f"{la}: plan (dry run)", R.secs(plan.wall_s)))
            rows.append(R.ratio_row(f"{la}: plan / find", plan.wall_s, find.wall_s, at_most=3))
            rows.append(R.Row(f"{la}: plan peak RSS", R.mib(plan.max_rss_kb)))
        if "strace" in parts:
            st = self.strace("a")
            for name in ("plan", "find"):
                per_tag = sum(st[name].values()) / a.total_tags
                rows.append(R.Row(f"{la}: fs syscalls per tag, {name}", f"{per_tag:.2f}"))
        if "sweep" in parts:
            sweep_b, plain_b, chk_sw_b, chk_plain_b = self.sweep_vs_plain("b")
            rows.append(
                R.Row(
                    f"{lb}: plain recipe (GC part)",
                    f"{R.secs(plain_b.wall_s)} ({R.secs(plain_b.gc_wall_s)})",
                )
            )
            rows.append(
                R.Row(
                    f"{lb}: sweep (GC part)",
                    f"{R.secs(sweep_b.wall_s)} ({R.secs(sweep_b.gc_wall_s)})",
                )
            )
            rows.append(
                R.ratio_row(
                    f"{lb}: plain recipe / sweep", plain_b.wall_s, sweep_b.wall_s, at_least=10
                )
            )
            rows.append(
                R.Row(
                    f"{lb}: outside GC, plain recipe / janitor",
                    f"{R.secs(plain_b.wall_s - plain_b.gc_wall_s)}"
                    f" / {R.secs(sweep_b.wall_s - sweep_b.gc_wall_s)}",
                )
            )
            sweep_c, plain_c, chk_sw_c, chk_plain_c = self.sweep_vs_plain("c")
            rows.append(
                R.Row(
                    f"{lc}: plain recipe (GC part)",
                    f"{R.secs(plain_c.wall_s)} ({R.secs(plain_c.gc_wall_s)})",
                )
            )
            rows.append(
                R.Row(
                    f"{lc}: sweep (GC part)",
                    f"{R.secs(sweep_c.wall_s)} ({R.secs(sweep_c.gc_wall_s)})",
                )
            )
            rows.append(R.ratio_row(f"{lc}: plain recipe / sweep", plain_c.wall_s, sweep_c.wall_s))
            for label, chk_sw, chk_plain in (
                (lb, chk_sw_b, chk_plain_b),
                (lc, chk_sw_c, chk_plain_c),
            ):
                rows.append(
                    R.Row(
                        f"{label}: kept tags broken after sweep",
                        f"{chk_sw.broken_tags} of {chk_sw.tags_present}",
                        "0",
                        chk_sw.broken_tags == 0 and chk_sw.retention_mismatch == 0,
                    )
                )
                rows.append(
                    R.Row(
                        f"{label}: kept tags broken after plain recipe",
                        f"{chk_plain.broken_tags} of {chk_plain.tags_present}",
                    )
                )
                rows.append(
                    R.Row(
                        f"{label}: blobs left, sweep / plain recipe",
                        f"{chk_sw.blobs} / {chk_plain.blobs}",
                    )
                )
            sweep_a = self.sweep_only("a")
            rows.append(
                R.Row(
                    f"{la}: sweep (GC part)",
                    f"{R.secs(sweep_a.wall_s)} ({R.secs(sweep_a.gc_wall_s)})",
                )
            )
            rows.append(R.Row(f"{la}: sweep peak RSS (GC included)", R.mib(sweep_a.max_rss_kb)))
            chk = self._last_check
            rows.append(
                R.Row(
                    f"{la}: kept tags broken after sweep",
                    f"{chk.broken_tags} of {chk.tags_present}",
                    "0",
                    chk.broken_tags == 0 and chk.retention_mismatch == 0,
                )
            )
        if "growth" in parts:
            h = sp["half"]
            lh = f"{h.repos}x{h.tags} -> {b.repos}x{b.tags}"
            plan_h, _ = self.plan("half")
            plan_b, _ = self.plan("b")
            sweep_h = self.sweep_only("half")
            if sweep_b is None:
                sweep_b = self.sweep_only("b")
            rows.append(
                R.Row(f"growth {lh}: plan", f"{R.secs(plan_h.wall_s)} -> {R.secs(plan_b.wall_s)}")
            )
            rows.append(
                R.ratio_row(f"growth {lh}: plan ratio", plan_b.wall_s, plan_h.wall_s, at_most=2.2)
            )
            rows.append(
                R.Row(
                    f"growth {lh}: sweep", f"{R.secs(sweep_h.wall_s)} -> {R.secs(sweep_b.wall_s)}"
                )
            )
            rows.append(
                R.ratio_row(
                    f"growth {lh}: sweep ratio", sweep_b.wall_s, sweep_h.wall_s, at_most=2.2
                )
            )
            # The two parts of that ratio: the janitor's own work and the registry's GC.
            own_h, own_b = sweep_h.wall_s - sweep_h.gc_wall_s, sweep_b.wall_s - sweep_b.gc_wall_s
            rows.append(
                R.Row(
                    f"growth {lh}: sweep outside GC / GC",
                    f"{R.secs(own_h)} -> {R.secs(own_b)} ({own_b / max(own_h, 1e-9):.2f}x)"
                    f" / {R.secs(sweep_h.gc_wall_s)} -> {R.secs(sweep_b.gc_wall_s)}"
                    f" ({sweep_b.gc_wall_s / max(sweep_h.gc_wall_s, 1e-9):.2f}x)",
                )
            )
        if "slowfs" in parts and not slowfs_available():
            log("slowfs skipped: needs /dev/fuse, fusermount3 (Debian fuse3) and mfusepy")
            rows.append(R.Row("slowfs", "skipped (no FUSE or mfusepy here)"))
        elif "slowfs" in parts:
            s = sp["slow"]
            ls = f"slowfs {self.latency_ms:g} ms, {s.repos}x{s.tags}"
            res = self.slow()
            c1, dflt = res["c1"], res["default"]
            assert isinstance(c1, dict) and isinstance(dflt, dict)
            conc = dflt["concurrency"]
            rows.append(R.Row(f"{ls}: plan, concurrency 1", R.secs(c1["wall_s"])))
            rows.append(R.Row(f"{ls}: plan, concurrency {conc} (default)", R.secs(dflt["wall_s"])))
            rows.append(
                R.Row(
                    f"{ls}: operations per tag (conc. {conc})", f"{dflt['ops'] / s.total_tags:.2f}"
                )
            )
            rows.append(
                R.Row(f"{ls}: model bound ops x latency / {conc}", R.secs(dflt["model_bound_s"]))
            )
            rows.append(
                R.ratio_row(
                    f"{ls}: plan / model bound", dflt["wall_s"], dflt["model_bound_s"], at_most=1.5
                )
            )
            rows.append(
                R.ratio_row(
                    f"{ls}: speed-up over concurrency 1", c1["wall_s"], dflt["wall_s"], at_least=5
                )
            )
            cal1, cal = res["calib-c1"], res["calib-default"]
            assert isinstance(cal1, dict) and isinstance(cal, dict)
            rows.append(
                R.Row(
                    f"{ls}: layer calibration (stat-only client), time / model bound",
                    f"{cal['wall_s'] / cal['model_bound_s']:.2f}x at {conc},"
                    f" {cal1['wall_s'] / cal1['model_bound_s']:.2f}x at 1",
                )
            )
        if "keepmany" in parts:
            # Where --delete-untagged's O(revisions x remaining tags) shows: keep half the tags.
            many = b.tags // 2
            lk = f"{lb}, keep {many}"
            sw, sd, chk_sw, chk_sd = self.sweep_vs_plain("b", many)
            rows.append(
                R.Row(
                    f"{lk}: plain recipe (GC part)", f"{R.secs(sd.wall_s)} ({R.secs(sd.gc_wall_s)})"
                )
            )
            rows.append(
                R.Row(f"{lk}: sweep (GC part)", f"{R.secs(sw.wall_s)} ({R.secs(sw.gc_wall_s)})")
            )
            rows.append(
                R.ratio_row(f"{lk}: plain recipe / sweep", sd.wall_s, sw.wall_s, at_least=10)
            )
            rows.append(
                R.Row(
                    f"{lk}: kept tags broken after sweep / plain recipe",
                    f"{chk_sw.broken_tags} / {chk_sd.broken_tags} of {chk_sw.tags_present}",
                )
            )
        gc_parts = [p for p in GC_PARTS if p in parts]
        if gc_parts and not (slowfs_available() and gcbench.available()):
            log("GC parts skipped: need /dev/fuse, fusermount3 (Debian fuse3) and mfusepy")
            rows.append(R.Row("GC parts", "skipped (no FUSE or mfusepy here)"))
        elif gc_parts:
            g = gcbench.GcBench(self, self.size, self.stock_max_tags)
            for part in gc_parts:
                getattr(g, part.replace("-", "_"))()
            rows += g.rows
            self.results["gc"] = g.results
        if "profile" in parts:
            ph = self.profile("a")
            rows.append(
                R.Row(
                    f"{la}: plan phases (in-process)",
                    ", ".join(f"{k} {v:.1f} s" for k, v in ph.items()),
                )
            )
        return rows


def slowfs_available() -> bool:
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError):
        return False
    return Path("/dev/fuse").exists() and shutil.which("fusermount3") is not None


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else ""


def machine() -> dict[str, str]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    reg = subprocess.run([C.REGISTRY_BIN, "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "janitor_commit": subprocess.run(
            [
                "git",
                "-C",
                str(Path(__file__).parent),
                "log",
                "-1",
                "--format=%h",
                "--",
                "../files/janitor",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "registry": reg.stdout.strip(),
        "filesystem": " ".join(
            subprocess.run(["df", "-T", "/var/tmp"], capture_output=True, text=True, check=False)
            .stdout.splitlines()[-1]
            .split()[:2]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument(
        "--only",
        default=",".join(PARTS + GC_PARTS),
        help=f"comma list of {', '.join(PARTS + GC_PARTS + OPTIONAL_PARTS)}"
        " (default: all but profile and keepmany)",
    )
    p.add_argument("--keep-last-n", type=int, default=10)
    p.add_argument(
        "--repeat", type=int, default=0, help="runs of read-only contenders, best kept (3; smoke 1)"
    )
    p.add_argument("--latency-ms", type=float, help="slow filesystem: per operation (2; smoke 0.5)")
    p.add_argument(
        "--gc-concurrency",
        type=int,
        help="the janitor's --concurrency in the GC parts (default: its own default, 8)",
    )
    p.add_argument(
        "--stock-max-tags",
        type=int,
        help="largest store (tags) the registry's garbage-collect runs on in gc-slowfs; larger"
        " ones are extrapolated (default full: 5,000 with the 1 s cache, 1,500 without)",
    )
    p.add_argument("--cache", default="/var/tmp/registry-cache-bench")
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.size == "smoke" else 3)
    args.latency_ms = args.latency_ms or (0.5 if args.size == "smoke" else 2.0)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS + GC_PARTS + OPTIONAL_PARTS)
    if unknown:
        p.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    for tool in (C.TIME_BIN, C.REGISTRY_BIN, shutil.which("strace") or "/usr/bin/strace"):
        if not Path(tool).exists():
            p.error(f"{tool} is missing (apt-get install time strace docker-registry)")
    C.janitor_bin()
    # Two runs on one cache would copy over and delete each other's work directory.
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    lock = open(Path(args.cache) / ".lock", "w")  # noqa: SIM115 held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        p.error(
            f"another benchmark run is using {args.cache}: wait for it, or give this one"
            " its own --cache DIR"
        )
    bench = Bench(args)
    start = time.perf_counter()
    rows = bench.run(parts)
    if args.size == "smoke":
        rows = R.for_smoke(rows)
    total = time.perf_counter() - start
    title = f"registry-cache benchmarks, size {args.size}, {time.strftime('%Y-%m-%d')}"
    print()
    print(R.text_table(rows, title))
    print(f"total {total:.0f} s")
    bench.results.update(
        {
            "machine": machine(),
            "size": args.size,
            "parts": parts,
            "total_s": total,
            "rows": [asdict(r) for r in rows],
        }
    )
    base = Path(args.cache) / f"results-{args.size}"
    base.with_suffix(".json").write_text(json.dumps(bench.results, indent=2, default=str))
    base.with_suffix(".md").write_text(R.markdown_table(rows) + "\n")
    print(f"results: {base}.json, {base}.md")
    # Ratios are figures, not tests (a smoke size is too small for them to mean anything);
    # a kept tag broken by the janitor's sweep or GC is a failure at any size.
    broken = [r for r in rows if r.is_check and r.met is False]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
