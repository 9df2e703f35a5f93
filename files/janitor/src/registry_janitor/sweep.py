"""A sweep: scan the store, plan per repository, apply, then garbage-collect.

Planning reads (tags, manifests, a few stats); only `apply` and GC change anything, and a dry
run stops after naming what they would do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from registry_janitor import executor, gc, manifests, pending, retention, store
from registry_janitor.config import Config
from registry_janitor.output import Output, human_bytes, iso
from registry_janitor.policy import Policy, Rule

log = logging.getLogger(__name__)

# Seconds a repository's `_layers` must have been quiet before an empty repository is removed:
# a push links its layers before it uploads the manifest.
EMPTY_REPOSITORY_AGE = retention.LEFTOVER_TAG_AGE

# Seconds an unreachable revision must have been quiet before it is unlinked (or KEEP_MIN_AGE
# if longer): a multi-arch push uploads its platform manifests before the index that reaches
# them. Harbor waits 2 h before collecting fresh blobs for the same reason.
UNTAGGED_MIN_AGE = 3600

# In the data directory: pruning removed something that GC has not collected yet.
GC_PENDING_FILE = ".registry-janitor.gc-pending"
# In the data directory, outside the registry's `docker/`: deletions pass through it.
TRASH_DIR = ".registry-janitor-trash"


@dataclass
class RepoPlan:
    repository: store.Repository
    rule: Rule
    decisions: list[retention.TagDecision] = field(default_factory=list)
    leftovers: list[store.Tag] = field(default_factory=list)
    unlink: list[str] = field(default_factory=list)
    unlink_mtimes: dict[str, float] = field(default_factory=dict)  # revision link mtime seen
    remove_repository: bool = False

    @property
    def deleted(self) -> list[retention.TagDecision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[retention.TagDecision]:
        return [d for d in self.decisions if d.keep]


@dataclass
class SweepStats:
    dry_run: bool = False
    repositories: int = 0
    tags_seen: int = 0
    tags_kept: int = 0
    tags_deleted: int = 0
    manifests_unlinked: int = 0
    leftovers_removed: int = 0
    repositories_removed: int = 0
    errors: int = 0
    gc_ran: bool = False
    gc_ok: bool = True
    gc_message: str = ""
    gc_duration: float = 0.0
    blobs_deleted: int = 0
    bytes_reclaimed: int = 0
    blobs_unknown_size: int = 0
    duration: float = 0.0
    scan_seconds: float = 0.0
    plan_seconds: float = 0.0
    apply_seconds: float = 0.0
    stopped: bool = False

    @property
    def removed_anything(self) -> bool:
        return (
            self.tags_deleted
            + self.manifests_unlinked
            + self.leftovers_removed
            + self.repositories_removed
            > 0
        )

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.gc_ok


def _decide(repo: store.Repository, rule: Rule, now: float) -> RepoPlan:
    plan = RepoPlan(repo, rule)
    if not repo.complete:
        plan.decisions = [
            retention.TagDecision(t, True, "repository not fully readable") for t in repo.tags
        ]
        return plan
    plan.decisions = retention.decide(repo.tags, rule, now)
    plan.leftovers = [t for t in repo.tags if retention.is_leftover(t, now)]
    return plan


def plan_all(
    repos: Sequence[store.Repository],
    policy: Policy,
    now: float,
    reader: manifests.ManifestReader,
    *,
    unlink_untagged: bool,
    pool: Executor | None = None,
    repositories_dir: Path | None = None,
) -> list[RepoPlan]:
    """Decide everything for every repository; reads, never writes.

    The I/O is batched across repositories (one manifest walk, one batch of stats), so on a
    slow filesystem the number of sequential round-trip waves does not grow with the number
    of repositories. With `repositories_dir`, stats are relative to it (repository names
    are paths below it), as the scan does: fewer lookups per stat.
    """
    root_fd = None
    if repositories_dir is not None and repos:  # a fresh store has no repositories/ yet
        root_fd = os.open(repositories_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _plan_all(repos, policy, now, reader, unlink_untagged, pool, root_fd)
    finally:
        if root_fd is not None:
            os.close(root_fd)


def _plan_all(
    repos: Sequence[store.Repository],
    policy: Policy,
    now: float,
    reader: manifests.ManifestReader,
    unlink_untagged: bool,
    pool: Executor | None,
    root_fd: int | None,
) -> list[RepoPlan]:
    def mtime(repo: store.Repository, below: str) -> float | None:
        if root_fd is None:
            return store.lstat_mtime(str(repo.path / below))
        return store.lstat_mtime(f"{repo.name}/{below}", root_fd)

    plans = [_decide(r, policy.rule_for(r.name), now) for r in repos]
    active = [p for p in plans if p.repository.complete]
    if unlink_untagged:
        roots = [retention.remaining_roots(p.decisions) for p in active]
        manifests.closure(frozenset().union(*roots), reader)  # fills the cache for all
        for p, repo_roots in zip(active, roots, strict=True):
            reach = manifests.closure(repo_roots, reader)  # served from the cache
            if not reach.complete:
                log.warning(
                    "%s: cannot read manifest(s) %s; not unlinking any revision here",
                    p.repository.name,
                    ", ".join(sorted(reach.unreadable)),
                )
                continue
            p.unlink = sorted(p.repository.revisions - reach.reachable)
        # A manifest pushed by digest moments ago may be the child of an index whose push is
        # still under way: untagged revisions must have been quiet for a while. One stat per
        # candidate only, never per revision.
        aging = [(p, d) for p in active for d in p.unlink]
        jobs = [
            (p.repository, f"_manifests/revisions/sha256/{d.removeprefix('sha256:')}/link")
            for p, d in aging
        ]
        stats = store.pmap_batched(pool, lambda job: mtime(*job), jobs)
        young: dict[int, set[str]] = {}
        for (p, d), seen in zip(aging, stats, strict=True):
            if seen is not None and now - seen < max(p.rule.keep_min_age, UNTAGGED_MIN_AGE):
                young.setdefault(id(p), set()).add(d)
            elif seen is not None:
                p.unlink_mtimes[d] = seen
        for p in active:
            if id(p) in young:
                p.unlink = [d for d in p.unlink if d not in young[id(p)]]
        # The sizes of the blobs GC will free are read by `_apply` (for the GC-pending mark),
        # not here: a dry run does not need them.
    empty = []
    for p in active:
        going = {d.tag for d in p.deleted} | set(p.leftovers)
        left_tags = [t for t in p.repository.tags if t not in going]
        left_revisions = p.repository.revisions - set(p.unlink)
        if not left_tags and not left_revisions and p.repository.uploads == 0:
            empty.append(p)
    layers = store.pmap_batched(pool, lambda p: mtime(p.repository, "_layers/sha256"), empty)
    for p, seen in zip(empty, layers, strict=True):
        # A push links its layers before it uploads the manifest: wait for a quiet `_layers`.
        p.remove_repository = seen is None or now - seen >= EMPTY_REPOSITORY_AGE
    return plans


# An operation of `_apply`: kind "tag" (item: TagDecision), "revision" (item: digest),
# "leftover" (item: Tag) or "repository" (item: None). A tuple, since a large store has
# hundreds of thousands; the log text is made only when the operation is recorded.
_Op = tuple[str, RepoPlan, object]

_EVENTS = {
    "tag": ("tag_deleted", "tags_deleted"),
    "revision": ("manifest_unlinked", "manifests_unlinked"),
    "leftover": ("leftover_removed", "leftovers_removed"),
    "repository": ("repository_removed", "repositories_removed"),
}

# Operations one pool task applies in a row (fewer futures on a large store); smaller when a
# phase is short, so every worker still gets a share.
APPLY_BATCH = 64


def _batches(ops: Sequence[_Op], workers: int) -> list[Sequence[_Op]]:
    size = max(1, min(APPLY_BATCH, len(ops) // (16 * max(workers, 1))))
    return [ops[i : i + size] for i in range(0, len(ops), size)]


class Janitor:
    def __init__(
        self, cfg: Config, out: Output, pool: Executor, stop: threading.Event | None = None
    ) -> None:
        self.cfg = cfg
        self.out = out
        self.pool = pool
        self.stop = stop or threading.Event()
        self.reader = manifests.ManifestReader(cfg.blobs_dir, pool)
        self._stats_lock = threading.Lock()

    @property
    def gc_pending_file(self) -> Path:
        return self.cfg.data_dir / GC_PENDING_FILE

    @property
    def trash_dir(self) -> Path:
        return self.cfg.data_dir / TRASH_DIR

    # -- prune -------------------------------------------------------------------------
    def prune(self, stats: SweepStats) -> None:
        cfg = self.cfg
        if not cfg.dry_run:
            left = executor.empty_trash(self.trash_dir)
            if left:
                log.info("emptied %d entries an interrupted sweep left in %s", left, self.trash_dir)
        now = time.time()
        t0 = time.monotonic()
        repos = store.scan(cfg.repositories_dir, self.pool)
        t1 = time.monotonic()
        plans = plan_all(
            repos,
            cfg.policy,
            now,
            self.reader,
            unlink_untagged=cfg.gc_delete_untagged,
            pool=self.pool,
            repositories_dir=cfg.repositories_dir,
        )
        t2 = time.monotonic()
        stats.repositories = len(repos)
        stats.tags_seen = sum(len(r.tags) for r in repos)
        stats.tags_kept = sum(len(p.kept) for p in plans)
        for p in plans:
            if p.rule.source != "default":
                log.debug("%s: rule %s", p.repository.name, p.rule.source)
        self._apply(plans, stats)
        # Phase timings: what the benchmarks on a slow filesystem look at.
        stats.scan_seconds = round(t1 - t0, 3)
        stats.plan_seconds = round(t2 - t1, 3)
        stats.apply_seconds = round(time.monotonic() - t2, 3)
        log.debug(
            "scan %.2f s, plan %.2f s (%d manifests read), apply %.2f s",
            stats.scan_seconds,
            stats.plan_seconds,
            self.reader.reads,
            stats.apply_seconds,
        )

    def _apply(self, plans: Sequence[RepoPlan], stats: SweepStats) -> None:
        tags: list[_Op] = []
        revisions: list[_Op] = []
        leftovers: list[_Op] = []
        repositories: list[_Op] = []
        for p in plans:
            tags += (("tag", p, d) for d in p.deleted)
            revisions += (("revision", p, d) for d in p.unlink)
            leftovers += (("leftover", p, t) for t in p.leftovers)
            if p.remove_repository:
                repositories.append(("repository", p, None))
        # Deepest repositories first, so a parent emptied by its child's removal can follow.
        repositories.sort(key=lambda op: -op[1].repository.name.count("/"))
        phases = (tags, revisions, leftovers)
        if self.cfg.dry_run:
            # Nothing to wait for: named from this thread, in order, without the pool.
            for op in (op for phase in (*phases, repositories) for op in phase):
                if self.stop.is_set():
                    break
                self._run(op, stats)
            stats.stopped = self.stop.is_set()
            return
        if any(phases) or repositories:
            # Written before the first deletion: if GC then fails, is skipped or the process
            # dies, the next sweep still runs GC although it finds nothing new to remove.
            pending.mark(self.gc_pending_file, self._sizes_freed(plans))
            self.trash_dir.mkdir(exist_ok=True)
        # Tags before revisions: a stop in between leaves revisions for the next sweep, never
        # a tag pointing at an unlinked manifest. Repositories one at a time, deepest first.
        for phase in phases:
            batches = _batches(phase, self.cfg.concurrency)
            list(self.pool.map(lambda ops: self._run_batch(ops, stats), batches))
        for op in repositories:
            self._run(op, stats)
        stats.stopped = self.stop.is_set()

    def _sizes_freed(self, plans: Sequence[RepoPlan]) -> dict[str, int]:
        """digest -> size of the blobs named by the revisions about to be unlinked."""
        # Not kept parsed: a large sweep unlinks ~100,000 manifests.
        return self.reader.blob_sizes(d for p in plans for d in p.unlink)

    def _run_batch(self, ops: Sequence[_Op], stats: SweepStats) -> None:
        for op in ops:
            self._run(op, stats)

    def _describe(self, op: _Op) -> tuple[str, dict[str, object]]:
        kind, p, item = op
        repo = p.repository.name
        verb = "would delete" if self.cfg.dry_run else "deleted"
        if kind == "tag":
            assert isinstance(item, retention.TagDecision)
            t = item.tag
            return (
                f"{verb} tag {repo}:{t.name} ({item.reason}, pushed {iso(t.mtime)}, {t.digest})",
                {
                    "repository": repo,
                    "tag": t.name,
                    "digest": t.digest,
                    "reason": item.reason,
                    "pushed": iso(t.mtime),
                },
            )
        if kind == "revision":
            verb = "would unlink" if self.cfg.dry_run else "unlinked"
            text = f"{verb} manifest {repo}@{item} (no remaining tag reaches it)"
            return text, {"repository": repo, "digest": item}
        if kind == "leftover":
            assert isinstance(item, store.Tag)
            since = iso(item.mtime)
            text = (
                f"{verb} leftover tag directory {repo}:{item.name} (no current/link since {since})"
            )
            return text, {"repository": repo, "tag": item.name}
        return f"{verb} empty repository {repo}", {"repository": repo}

    def _execute(self, op: _Op) -> object:
        # Looked up in `executor` at call time (the tests replace these functions).
        kind, p, item = op
        repo = p.repository
        if kind == "tag":
            assert isinstance(item, retention.TagDecision)
            return executor.delete_tag(repo, item.tag.name, self.trash_dir, item.tag.mtime)
        if kind == "revision":
            assert isinstance(item, str)
            return executor.unlink_revision(repo, item, self.trash_dir, p.unlink_mtimes.get(item))
        if kind == "leftover":
            assert isinstance(item, store.Tag)
            executor.remove_leftover_tag(repo, item.name)
        else:
            executor.remove_repository(repo, self.cfg.repositories_dir, self.trash_dir)
        return None

    def _run(self, op: _Op, stats: SweepStats) -> None:
        # Checked before each operation, never inside one: a signal stops the sweep between
        # two tags, not halfway through a tag.
        if self.stop.is_set():
            return
        event, counter = _EVENTS[op[0]]
        if not self.cfg.dry_run:
            try:
                if self._execute(op) is False:
                    # Pushed again since the scan (same tag or manifest): it stays.
                    text, fields = self._describe(op)
                    self.out.record(
                        "skipped",
                        f"kept after all, changed since the scan: {text}",
                        fields,
                        logging.WARNING,
                    )
                    return
            except OSError as exc:
                text, fields = self._describe(op)
                fields = {**fields, "error": str(exc)}
                self.out.record("error", f"failed: {text}: {exc}", fields, logging.ERROR)
                with self._stats_lock:
                    stats.errors += 1
                return
        with self._stats_lock:  # ops run on several threads
            setattr(stats, counter, getattr(stats, counter) + 1)
        text, fields = self._describe(op)
        fields["dry_run"] = self.cfg.dry_run
        self.out.record(event, text, fields)

    # -- gc ----------------------------------------------------------------------------
    def gc(self, stats: SweepStats) -> None:
        cfg = self.cfg
        warn_blobdescriptor(cfg.registry_config, self.out)
        cmd = gc.command(cfg.registry_bin, cfg.registry_config, dry_run=cfg.dry_run)
        self.out.emit("gc_started", f"running {' '.join(cmd)}", command=cmd)
        result = gc.run(cfg.registry_bin, cfg.registry_config, dry_run=cfg.dry_run)
        # Sizes from this process's reads, and from the prune that wrote the mark (the
        # deployment runs `prune` and `gc` as separate processes).
        sizes = {**pending.sizes(self.gc_pending_file), **self.reader.known_sizes()}
        if result.ok and not cfg.dry_run:
            pending.clear(self.gc_pending_file)
        stats.gc_ran = True
        stats.gc_ok = result.ok
        stats.gc_message = result.message
        stats.gc_duration = result.duration
        stats.blobs_deleted = len(result.deleted)
        stats.bytes_reclaimed = sum(sizes.get(d, 0) for d in result.deleted)
        stats.blobs_unknown_size = sum(1 for d in result.deleted if d not in sizes)
        if not result.ok:
            for line in result.output_tail:
                self.out.emit("gc_output", f"gc: {line}", level=logging.ERROR)
            self.out.emit("gc_failed", f"gc failed: {result.message}", level=logging.ERROR)
        else:
            self.out.emit(
                "gc_done",
                f"gc done in {result.duration:.1f} s: {len(result.deleted)} blobs deleted",
                duration=round(result.duration, 3),
                blobs_deleted=len(result.deleted),
            )

    def sweep(
        self, stats: SweepStats | None = None, *, run_prune: bool = True, run_gc: bool = True
    ) -> SweepStats:
        """Fills `stats` as it goes, so a sweep that raises still reports what it did."""
        start = time.monotonic()
        stats = stats if stats is not None else SweepStats(dry_run=self.cfg.dry_run)
        try:
            if run_prune:
                self.prune(stats)
            if self.stop.is_set():
                stats.stopped = True
            elif not run_gc:
                pass
            elif self.cfg.dry_run and run_prune:
                log.info("dry run: garbage-collect not run")
            elif run_prune and not stats.removed_anything and not self.gc_pending_file.exists():
                log.info("gc skipped: nothing was removed")
            else:
                self.gc(stats)
        finally:
            self.reader.close()
            stats.duration = time.monotonic() - start
        return stats


def warn_blobdescriptor(config_path: Path, out: Output) -> None:
    try:
        text = config_path.read_text(errors="replace")
    except OSError:
        return
    if gc.config_enables_blobdescriptor(text):
        out.emit(
            "config_warning",
            f"!!! {config_path} enables storage.cache.blobdescriptor: after GC the running"
            " registry keeps believing deleted blobs exist, and a re-pushed layer is then"
            " skipped and the image cannot be pulled. Remove the cache (the shipped config has"
            " none) or restart the registry after every GC. !!!",
            level=logging.WARNING,
            registry_config=str(config_path),
        )


def summary(stats: SweepStats, command: str) -> str:
    prefix = f"{command} {'dry run ' if stats.dry_run else ''}done"
    if stats.stopped:
        prefix = f"{command} stopped early"
    parts = []
    if command != "gc":
        parts += [
            f"{stats.repositories} repositories",
            f"{stats.tags_kept} tags kept",
            f"{stats.tags_deleted} {'to delete' if stats.dry_run else 'deleted'}",
            f"{stats.manifests_unlinked} manifests {'to unlink' if stats.dry_run else 'unlinked'}",
        ]
    if stats.leftovers_removed:
        parts.append(f"{stats.leftovers_removed} leftover tag dirs")
    if stats.repositories_removed:
        parts.append(f"{stats.repositories_removed} empty repositories")
    if stats.gc_ran:
        unknown = (
            f" (+{stats.blobs_unknown_size} of unknown size)" if stats.blobs_unknown_size else ""
        )
        parts.append(
            f"{stats.blobs_deleted} blobs / {human_bytes(stats.bytes_reclaimed)} reclaimed{unknown}"
        )
        parts.append(f"gc {stats.gc_duration:.1f} s" + ("" if stats.gc_ok else " FAILED"))
    else:
        parts.append("gc not run")
    if stats.errors:
        parts.append(f"{stats.errors} errors")
    return f"{prefix}: {', '.join(parts)}"
