"""Benchmarks of the janitor's own garbage collection (GC_ENGINE=janitor, no read-only window).

Parts of ``bench/run.py`` (``--only``):

- ``gc-slowfs``: on the writable slow filesystem (``slowfs.py``: 2 ms per operation, kernel
  attribute/entry cache 1 s as with cifs ``actimeo=1``, and 0 s), stores of 1,500 to 20,000
  tags pruned to the newest N per repository: ``registry-janitor gc`` against the registry's
  ``garbage-collect`` (no ``-m``) on identical copies. The layer counts every operation, so
  each run also has its model bound ``operations x latency / concurrency``.
- ``sweep-slowfs``: the whole ``registry-janitor sweep`` against the plain recipe
  (``plain_recipe.py``) on the slow filesystem, from the unpruned store.
- ``gc-local``: on local disk, ``registry-janitor gc`` against ``rm -rf`` of exactly the blob
  directories it deleted.
- ``window``: how long pushes are refused. A client pushes a small blob every 0.1 s through a
  registry serving the slow filesystem while (a) the janitor collects garbage, (b) the registry
  engine's window runs: restart on a read-only config, ``garbage-collect``, restart.
- ``gc-growth``: GC time as the store's history grows (more garbage, same live data) and as
  its live data grows (more kept tags, same garbage).

The registry's GC is serial and takes ~25 ms (cache 1 s) to ~160 ms (no cache) per blob of
the store on the slow filesystem, so it runs only up to ``--stock-max-tags`` (per cache
setting); beyond that its time is extrapolated linearly per blob in the store from the largest
store it ran on, and every such figure says so.

GC_SETTLE=0 in every timed run: the settle period is a fixed wait, not work (the janitor
reports it as a phase of its own; its default is 60 s). Stores are written in January 2026, so
all their data is older than GC_GRACE.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import check
import contenders as C
import report as R
import slowfs
from store import V2, StoreSpec, cached_store, copy_store, remove_tree

if TYPE_CHECKING:
    from run import Bench

# Stores for the slow filesystem. Blobs: 3 per tag and per untagged revision, plus a shared base.
GC_SIZES: dict[str, list[StoreSpec]] = {
    "full": [
        StoreSpec("slow", 30, 50),  # 1,500 tags
        StoreSpec("gc5k", 20, 250),  # 5,000 tags
        StoreSpec("b", 20, 1000),  # 20,000 tags
    ],
    "smoke": [StoreSpec("gcsmoke", 1, 12)],
}
# The registry's garbage-collect runs on stores up to this many tags (cache seconds -> tags);
# larger ones are extrapolated from the largest it ran on.
STOCK_MAX_TAGS = {"full": {1.0: 5000, 0.0: 1500}, "smoke": {1.0: 10**9, 0.0: 10**9}}
SWEEP_SIZES = {"full": [("slow", 1.0), ("slow", 0.0), ("gc5k", 1.0)], "smoke": [("gcsmoke", 1.0)]}
LOCAL_SIZES = {"full": ["b", "c"], "smoke": ["b"]}
# Kernel cache settings (seconds) per size: without a cache the registry's GC is too slow
# for the smoke size's time budget.
CACHES = {"full": (1.0, 0.0), "smoke": (1.0,)}
# gc-growth: (repositories, tags, keep) per point; history keeps 10 and adds garbage, live
# adds kept tags over the same 10 overwritten tags per repository.
GROWTH = {
    "full": {
        "history": [(20, 20, 10), (20, 40, 10), (20, 80, 10)],
        "live": [(20, 20, 10), (20, 40, 30), (20, 80, 70)],
    },
    "smoke": {"history": [(1, 8, 2), (1, 12, 2)], "live": [(1, 8, 2), (1, 12, 6)]},
}
PRUNED_VERSION = "1"


@dataclass
class FsRun:
    """One contender on the slow filesystem."""

    name: str
    wall_s: float
    ops: int
    ops_by_kind: dict[str, int]
    concurrency: int
    latency_ms: float
    cache_s: float
    layer_cpu_s: float
    load: tuple[float, float]
    blobs_before: int
    blobs_after: int
    kept_tags_broken: int
    needed_missing: int  # blobs the kept tags need that are gone
    garbage_left: int  # blobs nothing needs that are still there
    metrics: dict[str, float] = field(default_factory=dict)
    extrapolated_from: str = ""

    @property
    def bound_s(self) -> float:
        return self.ops * self.latency_ms / 1000.0 / self.concurrency

    @property
    def deleted(self) -> int:
        return self.blobs_before - self.blobs_after


@dataclass
class WindowRun:
    """Pushes during one collection (part window)."""

    engine: str
    gc_s: float = 0.0
    restart_ro_s: float = 0.0  # registry engine: restart on the read-only config
    restart_rw_s: float = 0.0  # and back
    pushes: int = 0
    accepted: int = 0
    refused: int = 0
    lost: int = 0  # accepted, but gone afterwards
    longest_gap_s: float = 0.0  # between two accepted pushes
    refused_span_s: float = 0.0  # from the last accepted push before a refusal to the next
    load: tuple[float, float] = (0.0, 0.0)


def _cache_label(cache_s: float) -> str:
    return f"cache {cache_s:g} s"


class GcBench:
    def __init__(self, bench: Bench, size: str, stock_max_tags: int | None) -> None:
        self.b = bench
        self.size = size
        self.latency_ms = bench.latency_ms
        self.keep = bench.keep
        self.rows: list[R.Row] = []
        self.results: dict[str, object] = {}
        limits = STOCK_MAX_TAGS[size]
        self.stock_max = {c: stock_max_tags or limits[c] for c in CACHES[size]}
        self.smoke = size == "smoke"
        # cache -> (blobs, seconds) of the largest store the registry's GC ran on
        self._stock_rate: dict[float, tuple[StoreSpec, FsRun]] = {}
        self.stock_runs: list[tuple[StoreSpec, FsRun]] = []  # for the window part

    # -- stores -------------------------------------------------------------------------
    def raw(self, spec: StoreSpec) -> Path:
        return cached_store(self.b.cache / "stores", spec)

    def pruned(self, spec: StoreSpec, keep: int) -> Path:
        """The store after a real prune keeping `keep` per repository, every unreachable
        revision unlinked (generated once, cached next to the raw stores)."""
        stores = self.b.cache / "stores"
        final = stores / f"{spec.key()}-pruned{keep}-v{PRUNED_VERSION}"
        if (final / ".pruned").exists():
            return final
        tmp = stores / f"{final.name}.tmp{os.getpid()}"
        copy_store(self.raw(spec), tmp, sync=False, hardlinks=self.smoke)
        C.run_timed("prune", C.prune_cmd(tmp, self.b.lock(), keep), self.b.out("prune-setup"))
        (tmp / ".pruned").write_text(f"keep {keep}\n")
        if final.exists():
            remove_tree(final)
        os.rename(tmp, final)
        return final

    def copy(self, src: Path, label: str) -> Path:
        dest = self.b.work / label
        copy_store(src, dest, sync=not self.smoke, hardlinks=self.smoke)
        return dest

    # -- one run on the slow filesystem --------------------------------------------------
    def on_slowfs(
        self,
        label: str,
        src: Path,
        spec: StoreSpec,
        keep: int,
        cache_s: float,
        make_cmd: Callable[[Path, Path], list[str]],
        concurrency: int,
        needed: set[str],
    ) -> FsRun:
        """Runs make_cmd(mount, registry config) against a fresh copy of `src` mounted on
        the slow filesystem; checks the store afterwards."""
        root = self.copy(src, f"store-{label}")
        before = len(check.blob_set(root))
        mnt = self.b.work / "slowfs-mnt"
        cfg = C.write_registry_config(self.b.work / f"registry-{label}.yml", mnt)
        metrics = self.b.work / f"metrics-{label}.prom"
        metrics.unlink(missing_ok=True)
        load0 = R.load_now()
        try:
            with slowfs.mounted(
                root, mnt, self.latency_ms, self.b.work / f"ops-{label}.json", cache_s=cache_s
            ) as m:
                res = C.run_timed(label, make_cmd(mnt, cfg), self.b.out(label))
            left = check.blob_set(root)
            chk = check.check_store(root, spec, keep)
        finally:
            remove_tree(root)
        run = FsRun(
            name=label,
            wall_s=res.wall_s,
            ops=m.ops,
            ops_by_kind=m.counts,
            concurrency=concurrency,
            latency_ms=self.latency_ms,
            cache_s=cache_s,
            layer_cpu_s=m.cpu_s,
            load=(load0, R.load_now()),
            blobs_before=before,
            blobs_after=len(left),
            kept_tags_broken=chk.broken_tags + chk.retention_mismatch,
            needed_missing=len(needed - left),
            garbage_left=len(left - needed),
            metrics=C.read_metrics(metrics),
        )
        self.b.log_line(
            f"  {label}: {run.wall_s:.2f} s, {run.ops} ops ({run.ops_by_kind}), bound"
            f" {run.bound_s:.2f} s, layer CPU {run.layer_cpu_s:.1f} s, deleted {run.deleted},"
            f" kept tags broken {run.kept_tags_broken}, needed blobs missing"
            f" {run.needed_missing}, garbage left {run.garbage_left}, load"
            f" {R.loads(*run.load)}"
        )
        self.results[label] = asdict(run)
        return run

    def janitor_gc(
        self, label: str, src: Path, spec: StoreSpec, keep: int, cache_s: float, needed: set[str]
    ) -> FsRun:
        conc = self.b.gc_concurrency or C.JANITOR_DEFAULT_CONCURRENCY

        def cmd(mnt: Path, cfg: Path) -> list[str]:
            metrics = self.b.work / f"metrics-{label}.prom"
            return C.janitor_gc_cmd(mnt, self.b.lock(), cfg, metrics, self.b.gc_concurrency)

        return self.on_slowfs(label, src, spec, keep, cache_s, cmd, conc, needed)

    def stock_gc(
        self, label: str, src: Path, spec: StoreSpec, keep: int, cache_s: float, needed: set[str]
    ) -> FsRun:
        return self.on_slowfs(
            label, src, spec, keep, cache_s, lambda _mnt, cfg: C.stock_gc_cmd(cfg), 1, needed
        )

    def stock_or_estimate(
        self, spec: StoreSpec, src: Path, cache_s: float, needed: set[str]
    ) -> FsRun:
        """The registry's GC on this store, or its linear extrapolation per blob in the store
        from the largest store it ran on (same cache setting)."""
        label = f"stock-gc-{spec.name}-c{cache_s:g}"
        if spec.total_tags <= self.stock_max[cache_s] or cache_s not in self._stock_rate:
            run = self.stock_gc(label, src, spec, self.keep, cache_s, needed)
            self._stock_rate[cache_s] = (spec, run)
            self.stock_runs.append((spec, run))
            return run
        base_spec, base = self._stock_rate[cache_s]
        blobs = len(check.blob_set(src))
        scale = blobs / base.blobs_before
        est = FsRun(
            name=label,
            wall_s=base.wall_s * scale,
            ops=round(base.ops * scale),
            ops_by_kind={},
            concurrency=1,
            latency_ms=self.latency_ms,
            cache_s=cache_s,
            layer_cpu_s=0.0,
            load=base.load,
            blobs_before=blobs,
            blobs_after=len(needed),
            kept_tags_broken=0,
            needed_missing=0,
            garbage_left=0,
            extrapolated_from=f"{base_spec.repos}x{base_spec.tags}",
        )
        self.b.log_line(
            f"  {label}: extrapolated {est.wall_s:.0f} s ({1000 * base.wall_s / base.blobs_before:.1f}"
            f" ms per blob x {blobs} blobs, from {est.extrapolated_from})"
        )
        self.results[label] = asdict(est)
        self.stock_runs.append((spec, est))
        return est

    # -- gc-slowfs ----------------------------------------------------------------------
    def gc_slowfs(self) -> None:
        for spec in GC_SIZES[self.size]:
            src = self.pruned(spec, self.keep)
            needed = check.needed_blobs(src)
            for cache_s in CACHES[self.size]:
                where = f"{spec.repos}x{spec.tags}, {_cache_label(cache_s)}"
                self.b.log_line(f"GC on slowfs ({self.latency_ms:g} ms), {where}")
                jan = self.janitor_gc(
                    f"janitor-gc-{spec.name}-c{cache_s:g}", src, spec, self.keep, cache_s, needed
                )
                stock = self.stock_or_estimate(spec, src, cache_s, needed)
                self._gc_rows(f"slowfs GC {where}", jan, stock)

    def _gc_rows(self, label: str, jan: FsRun, stock: FsRun) -> None:
        rows = self.rows
        garbage = jan.deleted
        rows.append(
            R.Row(
                f"{label}: store",
                f"{jan.blobs_before:,} blobs, {garbage:,} garbage",
            )
        )
        settle = jan.metrics.get('phase_duration_seconds{phase="settle"}', 0.0)
        rows.append(
            R.Row(
                f"{label}: janitor gc",
                f"{R.secs(jan.wall_s)}; {jan.ops:,} ops ({jan.ops / max(garbage, 1):.1f} per"
                f" garbage blob); settle {settle:.2f} s (GC_SETTLE=0)",
                load=R.loads(*jan.load),
            )
        )
        est = stock.extrapolated_from
        stock_text = f"{R.secs(stock.wall_s)}; {stock.ops:,} ops" + (
            f" (extrapolated from {est}, linear per blob)" if est else ""
        )
        rows.append(
            R.Row(
                f"{label}: registry garbage-collect",
                stock_text + f", {1000 * stock.wall_s / stock.blobs_before:.1f} ms per blob",
                load=R.loads(*stock.load),
            )
        )
        rows.append(
            R.ratio_row(
                f"{label}: stock GC / janitor gc",
                stock.wall_s,
                jan.wall_s,
                at_least=10,
                load=R.loads(*jan.load, *stock.load),
                note="extrapolated" if est else "",
            )
        )
        rows.append(
            R.Row(
                f"{label}: operations, stock x concurrency / janitor (what the layer allows)",
                f"{stock.ops * jan.concurrency / max(jan.ops, 1):.2f}x",
            )
        )
        rows.append(
            R.Row(
                f"{label}: janitor model bound ops x {jan.latency_ms:g} ms / {jan.concurrency}",
                f"{R.secs(jan.bound_s)} (layer CPU {jan.layer_cpu_s:.1f} s)",
            )
        )
        rows.append(
            R.ratio_row(
                f"{label}: janitor gc / its bound",
                jan.wall_s,
                jan.bound_s,
                at_most=1.5,
                load=R.loads(*jan.load),
            )
        )
        if not est:
            rows.append(
                R.ratio_row(f"{label}: stock GC / its bound (serial)", stock.wall_s, stock.bound_s)
            )
        for who, run in (("janitor", jan), ("stock", stock)):
            if run.extrapolated_from:
                continue
            rows.append(
                R.check_row(
                    f"{label}: {who}: kept tags broken, needed blobs missing, garbage left",
                    run.kept_tags_broken + run.needed_missing + run.garbage_left,
                    what=f"({run.kept_tags_broken} / {run.needed_missing} / {run.garbage_left})",
                )
            )

    # -- sweep-slowfs ---------------------------------------------------------------------
    def _sweep_cmd(self, label: str) -> Callable[[Path, Path], list[str]]:
        """The janitor's sweep; REVISION_GRACE=0 so it unlinks what the plain recipe's
        --delete-untagged does (every untagged manifest, now)."""
        extra = ["--revision-grace", "0"]
        if self.b.gc_concurrency:
            extra += ["--concurrency", str(self.b.gc_concurrency)]
        metrics = self.b.work / f"metrics-{label}.prom"
        return lambda mnt, cfg: C.sweep_cmd(
            mnt, self.b.lock(), self.keep, cfg, Path(C.REGISTRY_BIN), metrics, extra
        )

    def _plain_cmd(self, label: str) -> tuple[Callable[[Path, Path], list[str]], Path]:
        """The plain recipe, its garbage-collect timed through a wrapper (returned: its log)."""
        gc_log = self.b.work / f"gc-{label}.log"
        gc_log.unlink(missing_ok=True)
        wrapper = C.write_gc_wrapper(self.b.work / f"registry-{label}", gc_log)
        return lambda mnt, cfg: C.plain_recipe_cmd(mnt, self.keep, cfg, wrapper), gc_log

    def sweep_slowfs(self) -> None:
        specs = {s.name: s for s in GC_SIZES[self.size]}
        conc = self.b.gc_concurrency or C.JANITOR_DEFAULT_CONCURRENCY
        plain_base: dict[float, tuple[StoreSpec, FsRun]] = {}
        for name, cache_s in SWEEP_SIZES[self.size]:
            spec = specs[name]
            src = self.raw(spec)
            needed = check.needed_blobs(self.pruned(spec, self.keep))
            where = f"{spec.repos}x{spec.tags}, {_cache_label(cache_s)}"
            self.b.log_line(f"sweep vs plain recipe on slowfs ({self.latency_ms:g} ms), {where}")
            label = f"sweep-{spec.name}-c{cache_s:g}"
            sweep = self.on_slowfs(
                label, src, spec, self.keep, cache_s, self._sweep_cmd(label), conc, needed
            )
            label = f"plain-{spec.name}-c{cache_s:g}"
            cmd, gc_log = self._plain_cmd(label)
            plain = self.on_slowfs(label, src, spec, self.keep, cache_s, cmd, 1, needed)
            plain.metrics["gc_s"] = C.read_gc_log(gc_log)[0]
            self.results[label] = asdict(plain)
            plain_base[cache_s] = (spec, plain)
            self._sweep_rows(f"slowfs sweep {where}", sweep, plain)
        if self.size != "full":
            return
        # The 20,000-tag store: the janitor's sweep measured, the plain recipe extrapolated
        # from the largest store it ran on (its prune part per tag deleted, its GC part per
        # blob in the store).
        spec = GC_SIZES["full"][-1]
        cache_s = 1.0
        base_spec, base = plain_base[cache_s]
        where = f"{spec.repos}x{spec.tags}, {_cache_label(cache_s)}"
        self.b.log_line(f"sweep on slowfs, {where} (plain recipe extrapolated)")
        needed = check.needed_blobs(self.pruned(spec, self.keep))
        label = f"sweep-{spec.name}-c{cache_s:g}"
        sweep = self.on_slowfs(
            label, self.raw(spec), spec, self.keep, cache_s, self._sweep_cmd(label), conc, needed
        )
        per_blob = sweep.blobs_before / base.blobs_before
        gc_part = base.metrics["gc_s"] * per_blob
        per_tag = (spec.repos * (spec.tags - self.keep)) / (
            base_spec.repos * (base_spec.tags - self.keep)
        )
        prune_part = (base.wall_s - base.metrics["gc_s"]) * per_tag
        est = FsRun(
            name=f"plain-{spec.name}-c{cache_s:g}",
            wall_s=gc_part + prune_part,
            ops=round(base.ops * per_blob),
            ops_by_kind={},
            concurrency=1,
            latency_ms=self.latency_ms,
            cache_s=cache_s,
            layer_cpu_s=0.0,
            load=base.load,
            blobs_before=sweep.blobs_before,
            blobs_after=0,
            kept_tags_broken=0,
            needed_missing=0,
            garbage_left=0,
            metrics={"gc_s": gc_part},
            extrapolated_from=f"{base_spec.repos}x{base_spec.tags}",
        )
        self.results[est.name] = asdict(est)
        self._sweep_rows(f"slowfs sweep {where}", sweep, est)

    def _sweep_rows(self, label: str, sweep: FsRun, plain: FsRun) -> None:
        rows = self.rows
        gc_s = sweep.metrics.get("gc_duration_seconds", 0.0)
        settle = sweep.metrics.get('phase_duration_seconds{phase="settle"}', 0.0)
        rows.append(
            R.Row(
                f"{label}: janitor sweep (GC part)",
                f"{R.secs(sweep.wall_s)} ({R.secs(gc_s)}); {sweep.ops:,} ops; settle"
                f" {settle:.2f} s (GC_SETTLE=0)",
                load=R.loads(*sweep.load),
            )
        )
        est = plain.extrapolated_from
        rows.append(
            R.Row(
                f"{label}: plain recipe (GC part)",
                f"{R.secs(plain.wall_s)} ({R.secs(plain.metrics.get('gc_s', 0.0))})"
                + (f"; extrapolated from {est} (prune per tag, GC per blob)" if est else ""),
                load=R.loads(*plain.load),
            )
        )
        rows.append(
            R.ratio_row(
                f"{label}: plain recipe / janitor sweep",
                plain.wall_s,
                sweep.wall_s,
                at_least=10,
                load=R.loads(*sweep.load, *plain.load),
                note="extrapolated" if est else "",
            )
        )
        rows.append(
            R.ratio_row(
                f"{label}: janitor sweep / its bound (ops x latency / {sweep.concurrency})",
                sweep.wall_s,
                sweep.bound_s,
                at_most=1.5,
                load=R.loads(*sweep.load),
            )
        )
        for who, run in (("sweep", sweep), ("plain recipe", plain)):
            if run.extrapolated_from:
                continue
            rows.append(
                R.check_row(
                    f"{label}: {who}: kept tags broken, needed blobs missing, garbage left",
                    run.kept_tags_broken + run.needed_missing + run.garbage_left,
                    what=f"({run.kept_tags_broken} / {run.needed_missing} / {run.garbage_left})",
                )
                if who == "sweep"
                else R.Row(
                    f"{label}: {who}: kept tags broken, needed blobs missing, garbage left",
                    f"{run.kept_tags_broken} / {run.needed_missing} / {run.garbage_left}",
                )
            )

    # -- gc-local -----------------------------------------------------------------------
    def gc_local(self) -> None:
        for key in LOCAL_SIZES[self.size]:
            spec = self.b.specs[key]
            src = self.pruned(spec, self.keep)
            where = (
                f"store ({key}) {spec.repos}x{spec.tags}{' index' if spec.kind == 'index' else ''}"
            )
            self.b.log_line(f"GC on local disk vs rm -rf of the same blob directories, {where}")
            janitor_runs: list[C.Result] = []
            rm_runs: list[C.Result] = []
            doomed: list[str] = []
            jan_metrics: dict[int, dict[str, float]] = {}
            run_load: dict[int, float] = {}
            for rep in range(self.b.repeat):
                order = ("janitor", "rm") if rep % 2 == 0 or not doomed else ("rm", "janitor")
                for which in order:
                    root = self.copy(src, f"local-{which}")
                    try:
                        if which == "janitor":
                            before = check.blob_set(root)
                            metrics = self.b.work / f"metrics-local-{key}.prom"
                            metrics.unlink(missing_ok=True)
                            cfg = C.write_registry_config(self.b.work / "registry-local.yml", root)
                            res = C.run_timed(
                                "janitor-gc-local",
                                C.janitor_gc_cmd(root, self.b.lock(), cfg, metrics),
                                self.b.out(f"janitor-gc-local-{key}"),
                            )
                            jan_metrics[id(res)] = C.read_metrics(metrics)
                            gone = sorted(before - check.blob_set(root))
                            if doomed and gone != doomed:
                                raise RuntimeError("janitor gc deleted a different set this time")
                            doomed = gone
                            janitor_runs.append(res)
                        else:
                            res = self._rm_rf(root, doomed, key)
                            rm_runs.append(res)
                        run_load[id(res)] = R.load_now()
                    finally:
                        remove_tree(root)
                    self.b.log_line(f"  {which}: {res.wall_s:.2f} s (load {R.load_now():.1f})")
            jan = min(janitor_runs, key=lambda r: r.wall_s)
            rm = min(rm_runs, key=lambda r: r.wall_s)
            phases = {
                k.split('"')[1]: v
                for k, v in jan_metrics[id(jan)].items()
                if k.startswith("phase_duration_seconds")
            }
            self.results[f"gc_local_{key}"] = {
                "janitor_s": [r.wall_s for r in janitor_runs],
                "rm_s": [r.wall_s for r in rm_runs],
                "deleted": len(doomed),
                "phases": phases,
            }
            loads = R.loads(*(run_load[id(r)] for r in janitor_runs + rm_runs))
            self.rows.append(
                R.Row(
                    f"local GC {where}: janitor gc, best of {len(janitor_runs)}",
                    f"{R.secs(jan.wall_s)} for {len(doomed):,} blobs; phases "
                    + ", ".join(f"{k} {v:.2f}" for k, v in sorted(phases.items())),
                    load=loads,
                )
            )
            self.rows.append(
                R.Row(
                    f"local GC {where}: rm -rf of the same blob directories, best of"
                    f" {len(rm_runs)}",
                    R.secs(rm.wall_s),
                    load=loads,
                )
            )
            self.rows.append(
                R.ratio_row(
                    f"local GC {where}: janitor gc / rm -rf",
                    jan.wall_s,
                    rm.wall_s,
                    at_most=1.3,
                    load=loads,
                )
            )

    def _rm_rf(self, root: Path, doomed: list[str], key: str) -> C.Result:
        listing = self.b.work / f"rm-list-{key}"
        blobs = root / V2 / "blobs" / "sha256"
        listing.write_bytes(b"".join(f"{blobs / h[:2] / h}\0".encode() for h in doomed))
        cmd = ["xargs", "-0", "-a", str(listing), "rm", "-rf", "--"]
        return C.run_timed("rm-rf", cmd, self.b.out(f"rm-rf-{key}"))

    # -- window -------------------------------------------------------------------------
    def window(self) -> None:
        spec = GC_SIZES[self.size][0]
        src = self.pruned(spec, self.keep)
        cache_s = 1.0
        where = f"{spec.repos}x{spec.tags}, {_cache_label(cache_s)}"
        self.b.log_line(f"pushes refused during GC, slowfs ({self.latency_ms:g} ms), {where}")
        jan = self._window_run("janitor", src, cache_s)
        reg = self._window_run("registry", src, cache_s)
        self.results["window"] = {"janitor": asdict(jan), "registry": asdict(reg)}
        self.rows.append(
            R.check_row(
                f"window {where}: janitor engine, pushes refused during its GC",
                jan.refused,
                jan.pushes,
                what=f"(longest gap between accepted pushes {jan.longest_gap_s:.2f} s;"
                f" GC {jan.gc_s:.1f} s; registry restarts 0)",
            )
        )
        self.rows.append(
            R.check_row(
                f"window {where}: blobs pushed during the janitor's GC missing afterwards",
                jan.lost,
                jan.accepted,
            )
        )
        self.rows.append(
            R.Row(
                f"window {where}: registry engine, pushes refused (read-only restart,"
                " garbage-collect, restart)",
                f"{reg.refused} of {reg.pushes}; refused for {reg.refused_span_s:.1f} s"
                f" = restart {reg.restart_ro_s:.2f} s + GC {reg.gc_s:.1f} s + restart"
                f" {reg.restart_rw_s:.2f} s; {reg.lost} of the {reg.accepted} blobs pushed"
                " before the window (no manifest yet) deleted by garbage-collect",
                load=R.loads(*reg.load),
            )
        )
        restart = reg.restart_ro_s + reg.restart_rw_s
        # Every store of gc-slowfs: the registry GC's time there (measured or extrapolated)
        # plus the two restarts measured here.
        for spec, run in self.stock_runs:
            self.rows.append(
                R.Row(
                    f"window: registry engine, {spec.repos}x{spec.tags}"
                    f" ({_cache_label(run.cache_s)}): restarts + GC",
                    R.secs(restart + run.wall_s)
                    + (" (GC extrapolated)" if run.extrapolated_from else ""),
                )
            )

    def _window_run(self, engine: str, src: Path, cache_s: float) -> WindowRun:
        root = self.copy(src, f"window-{engine}")
        mnt = self.b.work / "slowfs-mnt"
        port = _free_port()
        cfg = C.write_registry_config(
            self.b.work / f"window-{engine}.yml", mnt, f"127.0.0.1:{port}"
        )
        ro_cfg = C.write_registry_config(
            self.b.work / f"window-{engine}-ro.yml", mnt, f"127.0.0.1:{port}", readonly=True
        )
        out = WindowRun(engine)
        quiet = 0.3 if self.smoke else 1.0  # pushing before and after the GC
        load0 = R.load_now()
        pusher = _Pusher(port)
        try:
            with slowfs.mounted(
                root,
                mnt,
                self.latency_ms,
                self.b.work / f"ops-window-{engine}.json",
                cache_s=cache_s,
            ):
                reg = _Registry(cfg, port, self.b.work / f"window-{engine}.log")
                reg.start(cfg)
                try:
                    with pusher.running():
                        time.sleep(quiet)
                        t0 = time.monotonic()
                        if engine == "janitor":
                            C.run_timed(
                                "janitor-gc-window",
                                C.janitor_gc_cmd(
                                    mnt, self.b.lock(), cfg, self.b.work / "metrics-window.prom"
                                ),
                                self.b.out("janitor-gc-window"),
                            )
                            out.gc_s = time.monotonic() - t0
                        else:
                            reg.restart(ro_cfg)
                            t1 = time.monotonic()
                            C.run_timed(
                                "stock-gc-window",
                                C.stock_gc_cmd(ro_cfg),
                                self.b.out("stock-gc-window"),
                            )
                            t2 = time.monotonic()
                            reg.restart(cfg)
                            out.restart_ro_s, out.gc_s = t1 - t0, t2 - t1
                            out.restart_rw_s = time.monotonic() - t2
                        time.sleep(quiet)
                    out.lost = sum(1 for d in pusher.accepted if not pusher.exists(d))
                finally:
                    reg.stop()
        finally:
            remove_tree(root)
        pusher.summarize(out)
        out.load = (load0, R.load_now())
        self.b.log_line(f"  {engine}: {out}")
        return out

    # -- gc-growth ------------------------------------------------------------------------
    def gc_growth(self) -> None:
        cache_s = 1.0
        series = GROWTH[self.size]
        done: dict[tuple[int, int, int], tuple[FsRun, FsRun]] = {}
        for kind, points in series.items():
            texts = []
            for repos, tags, keep in points:
                key = (repos, tags, keep)
                if key not in done:
                    spec = StoreSpec(f"grow{tags}", repos, tags)
                    src = self.pruned(spec, keep)
                    needed = check.needed_blobs(src)
                    self.b.log_line(
                        f"GC growth ({kind}): {repos}x{tags} keep {keep}, {_cache_label(cache_s)}"
                    )
                    jan = self.janitor_gc(
                        f"janitor-gc-grow{tags}-k{keep}", src, spec, keep, cache_s, needed
                    )
                    # The smoke size runs the janitor only (time budget).
                    stock = (
                        jan
                        if self.smoke
                        else self.stock_gc(
                            f"stock-gc-grow{tags}-k{keep}", src, spec, keep, cache_s, needed
                        )
                    )
                    done[key] = (jan, stock)
                jan, stock = done[key]
                live = jan.blobs_after
                texts.append(
                    f"{live:,} live + {jan.deleted:,} garbage: janitor {R.secs(jan.wall_s)}"
                    f" ({jan.ops:,} ops)"
                    + ("" if stock is jan else f", stock {R.secs(stock.wall_s)}")
                )
                self.rows.append(
                    R.check_row(
                        f"GC growth {repos}x{tags} keep {keep}: janitor: kept tags broken,"
                        " needed blobs missing, garbage left",
                        jan.kept_tags_broken + jan.needed_missing + jan.garbage_left,
                    )
                )
            what = (
                "history (garbage grows, 10 kept per repository)"
                if kind == "history"
                else ("live data (kept tags grow, same garbage)")
            )
            self.rows.append(
                R.Row(
                    f"GC growth with {what}, slowfs {_cache_label(cache_s)}",
                    "; ".join(texts),
                )
            )
            first, last = done[points[0]], done[points[-1]]
            for who, i in (("janitor", 0), ("stock", 1))[: 1 if self.smoke else 2]:
                a, b = first[i], last[i]
                d_live = last[0].blobs_after - first[0].blobs_after
                d_garbage = last[0].deleted - first[0].deleted
                d_blobs = d_live if kind == "live" else d_garbage
                self.rows.append(
                    R.Row(
                        f"GC growth with {kind}: {who}, extra time per extra"
                        f" {'live' if kind == 'live' else 'garbage'} blob",
                        f"{1000 * (b.wall_s - a.wall_s) / max(d_blobs, 1):.2f} ms"
                        f" ({(b.ops - a.ops) / max(d_blobs, 1):.1f} ops)",
                        load=R.loads(*a.load, *b.load),
                    )
                )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Registry:
    """`docker-registry serve` on 127.0.0.1; restart = stop, start on a config, wait until
    /v2/ answers (what a container restart adds on top is not included)."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, config: Path) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [C.REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            time.sleep(0.02)
        raise RuntimeError(f"registry did not answer, see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def restart(self, config: Path) -> None:
        self.stop()
        self.start(config)


class _Pusher:
    """Pushes a small unique blob (monolithic upload: POST, then PUT with the digest) every
    0.1 s; records accepted and refused pushes with their times."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[str] = []
        self.times: list[tuple[float, bool]] = []
        self._stop = threading.Event()

    def _push(self, n: int) -> str | None:
        import hashlib

        data = f"window probe {time.time()} {n}\n".encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("POST", "/v2/bench/window/blobs/uploads/")
            r = conn.getresponse()
            r.read()
            if r.status != 202:
                return None
            loc = r.getheader("Location") or ""
            sep = "&" if "?" in loc else "?"
            path = loc.split("127.0.0.1:" + str(self.port), 1)[-1]
            conn.request(
                "PUT",
                f"{path}{sep}digest={digest}",
                body=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            r = conn.getresponse()
            r.read()
            conn.close()
            return digest if r.status == 201 else None
        except OSError:
            return None

    def exists(self, digest: str) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("HEAD", f"/v2/bench/window/blobs/{digest}")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            digest = self._push(n)
            self.times.append((time.monotonic(), digest is not None))
            if digest:
                self.accepted.append(digest)
            self._stop.wait(0.1)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        t = threading.Thread(target=self._loop, daemon=True)
        t.start()
        try:
            yield
        finally:
            self._stop.set()
            t.join(60)

    def summarize(self, out: WindowRun) -> None:
        ok_times = [t for t, ok in self.times if ok]
        gaps = [b - a for a, b in itertools.pairwise(ok_times)]
        refused = [t for t, ok in self.times if not ok]
        span = 0.0
        if refused:
            # From the last accepted push before the first refusal to the first accepted after
            # the last one: the time a client could not push.
            before = [t for t in ok_times if t < refused[0]]
            after = [t for t in ok_times if t > refused[-1]]
            span = (after[0] if after else refused[-1]) - (before[-1] if before else refused[0])
        out.pushes, out.accepted, out.refused = len(self.times), len(ok_times), len(refused)
        out.longest_gap_s, out.refused_span_s = max(gaps, default=0.0), span


def available() -> bool:
    return shutil.which("fusermount3") is not None and Path("/dev/fuse").exists()
