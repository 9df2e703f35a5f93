"""A sweep: put back what an interrupted run held, scan, plan, prune, collect garbage.

Whether and how garbage is collected is decided here and nowhere else:
- GC_ENGINE=janitor (default): the janitor's own collection (gc.py) after every prune, with
  the registry serving pushes throughout;
- GC_ENGINE=registry: the registry's `garbage-collect`, only when a prune removed something
  since the last successful one (the GC-pending mark), and only safe while the registry
  refuses writes (the deployment's read-only window runs `prune` and `gc` separately).

A dry run prints the plan (prune and collection together) and changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

from registry_janitor import (
    executor,
    journal,
    manifests,
    pending,
    plan,
    pulls,
    registry_gc,
    retention,
    store,
)
from registry_janitor.backends import open_storage
from registry_janitor.config import Config
from registry_janitor.gc import Collector, Mark
from registry_janitor.hold import Hold
from registry_janitor.output import Output, iso
from registry_janitor.plan import RepoPlan
from registry_janitor.records import Repository, SweepStats, Tag
from registry_janitor.registry_log import Position, RegistryLog
from registry_janitor.storage import Storage
from registry_janitor.survey import Survey, describe

log = logging.getLogger(__name__)

# In the data directory: pruning removed something that the registry's garbage-collect has
# not collected yet (registry engine only).
GC_PENDING_FILE = pending.GC_PENDING_FILE

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


class Janitor:
    def __init__(
        self,
        cfg: Config,
        out: Output,
        pool: Executor,
        stop: threading.Event | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = out
        self.pool = pool
        self.stop = stop or threading.Event()
        self.storage = storage if storage is not None else open_storage(cfg)
        self.reader = manifests.ManifestReader(self.storage, pool)
        self.hold = Hold(self.storage)
        self._stats_lock = threading.Lock()
        self._held_layers: list[str] = []  # repositories whose `_layers` this run holds
        self._gc_engine = cfg.gc_engine

    def gc_pending(self) -> bool:
        """The GC-pending mark is there (registry engine: a garbage-collect is owed)."""
        return pending.exists(self.storage)

    # -- the whole run -----------------------------------------------------------------
    def sweep(
        self, stats: SweepStats | None = None, *, run_prune: bool = True, run_gc: bool = True
    ) -> SweepStats:
        """Fills `stats` as it goes, so a sweep that raises still reports what it did."""
        start = time.monotonic()
        stats = stats if stats is not None else SweepStats(dry_run=self.cfg.dry_run)
        stats.gc_engine = self._gc_engine
        try:
            if not self.cfg.dry_run:
                self._resolve_interrupted()
            roots, survey = self._prune(stats) if run_prune else self._linked(stats)
            if self.stop.is_set():
                stats.stopped = True
            elif run_gc and self._gc_engine == "janitor":
                self._collect(roots, survey, stats)
            elif run_gc and self.gc_due(stats if run_prune else None):
                self._registry_gc(stats)
            elif run_gc and not self.cfg.dry_run:
                log.info("gc skipped: nothing removed since the last garbage-collect")
            if self._held_layers:  # no collection settled them
                self._settle_layers(stats)
        finally:
            self.reader.close()
            self.storage.close()
            stats.duration = time.monotonic() - start
        return stats

    def gc_due(self, pruned: SweepStats | None = None) -> bool:
        """Registry engine: whether garbage-collect has anything to do. A `gc` run on its
        own always runs it; after a prune only if something was removed since the last
        successful collection (the mark survives failures and crashes)."""
        if pruned is None:
            return True
        if self.cfg.dry_run:
            return False
        return pruned.removed_anything or self.gc_pending()

    def _resolve_interrupted(self) -> None:
        blobs, layers = self.hold.resolve_interrupted()
        if blobs or layers:
            self.out.emit(
                "hold_resolved",
                f"put back {blobs} blobs and settled {layers} repositories' layer links an"
                " interrupted run had held",
                level=logging.WARNING,
                blobs=blobs,
                repositories=layers,
            )
        done, left = executor.empty_trash(self.storage)
        if done:
            log.info("emptied %d entries an earlier run left in the trash", done)
        if left:
            log.info("%d trash entries cannot be deleted yet; the next run retries", left)

    # -- prune -------------------------------------------------------------------------
    def _prune(self, stats: SweepStats) -> tuple[dict[str, frozenset[str]], Survey]:
        """Returns the revisions linked after the prune (the roots of a collection) and the
        survey that read them (with what it could not read)."""
        cfg = self.cfg
        now = time.time()
        t0 = time.monotonic()
        survey = Survey(self.storage)
        repos = store.scan(survey, self.pool)
        feed = self._read_pulls(repos, now, stats)
        t1 = time.monotonic()
        first_seen = plan.load_first_seen(self.storage) if cfg.gc_delete_untagged else {}
        plans = plan.plan_all(
            repos,
            cfg.policy,
            now,
            self.reader,
            self.storage,
            unlink_untagged=cfg.gc_delete_untagged,
            revision_grace=cfg.revision_grace,
            first_seen=first_seen,
            pool=self.pool,
            feed=feed,
        )
        self._say_what_pulls_cannot_decide(plans, feed)
        t2 = time.monotonic()
        stats.repositories = len(repos)
        stats.tags_seen = sum(len(r.tags) for r in repos)
        stats.tags_kept = sum(len(p.kept) for p in plans)
        stats.manifests_spared = sum(p.spared for p in plans)
        for p in plans:
            for err in p.errors:
                self.out.emit(
                    "error",
                    f"{p.repository.name}: {err}; kept what depends on it",
                    level=logging.ERROR,
                    repository=p.repository.name,
                )
                stats.errors += 1
        if not cfg.dry_run and cfg.gc_delete_untagged and any(p.condemned for p in plans):
            # Before the first tag goes: a kill between tags and revisions must not make the
            # next run wait an hour for what this one decided.
            self._save_first_seen(plan.with_condemned(first_seen, plans))
        unlinked = self._apply(plans, stats)
        if not cfg.dry_run and cfg.gc_delete_untagged:
            self._save_first_seen(first_seen)
        stats.phases.update(
            scan=round(t1 - t0, 3), plan=round(t2 - t1, 3), apply=round(time.monotonic() - t2, 3)
        )
        log.debug(
            "scan %.2f s, plan %.2f s (%d manifests read), apply %.2f s",
            t1 - t0,
            t2 - t1,
            self.reader.reads,
            stats.phases["apply"],
        )
        roots = {
            r.name: r.revisions - unlinked.get(r.name, frozenset())
            for r in repos
            if r.complete and r.has_manifests
        }
        return roots, survey

    def _read_pulls(
        self, repos: Sequence[Repository], now: float, stats: SweepStats
    ) -> pulls.Feed | None:
        """The pull record brought up to date with the registry's log, and saved (not in a
        dry run) before anything is decided on it. None when nothing asks for it."""
        cfg = self.cfg
        uses = cfg.policy.default.uses_pulls or any(r.uses_pulls for _, r in cfg.policy.rules)
        if cfg.registry_log is None and cfg.notifications_journal is None and not uses:
            return None
        reader = RegistryLog(cfg.registry_log, pulls=True) if cfg.registry_log else None
        try:
            feed = pulls.read_feed(
                self.storage,
                reader,
                now,
                cfg.notifications_journal,
                cfg.notifications_pending_urls,
            )
        finally:
            if reader is not None:
                reader.close()
        stats.pulls_read = pulls.counts_by_repository(feed.read)
        stats.pulls_covered_since = feed.covered_since
        if cfg.notifications_pending_urls:
            stats.notifications_undelivered = -1 if feed.undelivered is None else feed.undelivered
        if feed.gap:
            log.info("pull record: %s", feed.gap)
        if feed.current and not cfg.dry_run:
            pulls.forget(feed.record, repos, now)
            try:
                pulls.save(self.storage, feed.record)
            except OSError as exc:
                # The next run reads the same lines again: nothing is lost but time.
                log.warning("cannot save %s: %s", pulls.PULLS_FILE, exc)
            else:
                self._rotate_journal(feed.record.journal)
        return feed

    def _rotate_journal(self, merged: Position | None) -> None:
        """Once the record holding the journal's pulls is saved: a large journal read to its
        end starts anew (journal.rotate)."""
        path = self.cfg.notifications_journal
        if path is None:
            return
        try:
            journal.rotate(path, merged)
        except OSError as exc:  # it grows until the next run tries again
            log.warning("cannot rotate the notification journal %s: %s", path, exc)

    def _say_what_pulls_cannot_decide(
        self, plans: Sequence[RepoPlan], feed: pulls.Feed | None
    ) -> None:
        """Once per run: how many tags pull rules kept only because the record is short."""
        unknown = [
            f"{p.repository.name}:{d.tag.name}"
            for p in plans
            for d in p.decisions
            if d.reason == retention.KEEP_PULL_UNKNOWN
        ]
        if not unknown:
            return
        since = feed.covered_since if feed is not None else None
        why = feed.gap if feed is not None and feed.gap else "no pull record"
        span = f"holds every pull only since {iso(since)}" if since else f"is not usable ({why})"
        self.out.emit(
            "pull_record_short",
            f"kept {len(unknown)} tag(s) pull rules might keep: the pull record {span}, and"
            " no tag is deleted on pull grounds for a time it does not cover",
            level=logging.WARNING,
            tags=len(unknown),
            covered_since=iso(since) if since else None,
            reason=why,
        )

    def _save_first_seen(self, seen: plan.FirstSeen) -> None:
        try:
            plan.save_first_seen(self.storage, seen)
        except OSError as exc:
            log.warning("cannot save %s: %s", plan.UNREACHABLE_FILE, exc)

    def _linked(self, stats: SweepStats) -> tuple[dict[str, frozenset[str]], Survey]:
        """The roots for a collection run on its own."""
        t0 = time.monotonic()
        survey = Survey(self.storage)
        roots = store.linked_revisions(survey, self.pool)
        stats.repositories = len(roots)
        stats.phases["scan"] = round(time.monotonic() - t0, 3)
        return roots, survey

    def _apply(self, plans: Sequence[RepoPlan], stats: SweepStats) -> dict[str, frozenset[str]]:
        """Applies (or in a dry run, names) the plan; returns the revisions unlinked."""
        tags: list[_Op] = []
        leftovers: list[_Op] = []
        repositories: list[_Op] = []
        for p in plans:
            tags += (("tag", p, d) for d in p.deleted)
            leftovers += (("leftover", p, t) for t in p.leftovers)
            if p.remove_repository:
                repositories.append(("repository", p, None))
        # Deepest repositories first, so a parent emptied by its child's removal can follow.
        repositories.sort(key=lambda op: -op[1].repository.name.count("/"))
        if self.cfg.dry_run:
            revisions = [("revision", p, d) for p in plans for d in p.unlink]
            # Nothing to wait for: named from this thread, in order, without the pool.
            for op in (*tags, *revisions, *leftovers, *repositories):
                if self.stop.is_set():
                    break
                self._run(op, stats)
            stats.stopped = self.stop.is_set()
            return {p.repository.name: frozenset(p.unlink) for p in plans if p.unlink}
        if self._gc_engine == "registry" and any(p.unlink or p.deleted for p in plans):
            # Written before the first deletion: if GC then fails, is skipped or the process
            # dies, the next sweep still runs GC although it finds nothing new to remove.
            pending.mark(self.storage, self._sizes_freed(plans))
        # Tags before revisions: a stop in between leaves revisions for the next sweep, never
        # a tag pointing at an unlinked manifest.
        self._run_phase(tags, stats)
        self._keep_what_is_tagged_now(plans, stats)
        revisions = [("revision", p, d) for p in plans for d in p.unlink]
        not_unlinked = self._run_phase(revisions, stats)
        self._run_phase(leftovers, stats)
        for op in repositories:  # one at a time, deepest first
            self._run(op, stats)
        stats.stopped = self.stop.is_set()
        gone = {(op[1].repository.name, op[2]) for op in revisions} - {
            (op[1].repository.name, op[2]) for op in not_unlinked
        }
        unlinked: dict[str, set[str]] = {}
        for name, digest in gone:
            unlinked.setdefault(name, set()).add(str(digest))
        return {k: frozenset(v) for k, v in unlinked.items()}

    def _run_phase(self, ops: Sequence[_Op], stats: SweepStats) -> list[_Op]:
        """Runs the operations on the pool; returns those not done (failed, skipped or
        not reached before a stop)."""
        done = store.pmap_batched(self.pool, lambda op: self._run(op, stats), ops)
        return [op for op, ok in zip(ops, done, strict=True) if not ok]

    def _keep_what_is_tagged_now(self, plans: Sequence[RepoPlan], stats: SweepStats) -> None:
        """Right before revisions are unlinked: re-read each repository's tags and revisions.
        What a tag reaches now (a tag not deleted after all, a tag pushed since the scan) and
        what a revision linked since the scan reaches (an index pushed meanwhile that reuses
        an old child: buildx and `imagetools create` do not upload children the registry
        has) stays linked. A repository that cannot be re-read unlinks nothing."""
        todo = [p for p in plans if p.unlink]
        if not todo:
            return
        survey = Survey(self.storage)
        now = store.reread(survey, (p.repository.name for p in todo), self.pool)
        for p in todo:
            name = p.repository.name
            gaps = survey.gaps_of(name)
            tags, revisions = now[name]
            roots = {t.digest for t in tags if t.digest} | (revisions - p.repository.revisions)
            reach = manifests.closure(roots, self.reader) if not gaps else None
            if reach is None or not reach.complete:
                why = describe(gaps) if gaps else "a manifest a tag reaches cannot be read"
                with self._stats_lock:
                    stats.errors += 1
                self.out.emit(
                    "error",
                    f"{name}: cannot re-read before unlinking ({why}); no revision unlinked",
                    level=logging.ERROR,
                    repository=name,
                )
                p.unlink = []
                continue
            kept = [d for d in p.unlink if d in reach.reachable]
            if kept:
                self.out.emit(
                    "skipped",
                    f"{name}: {len(kept)} revision(s) kept after all: a tag or a manifest pushed"
                    " since the scan reaches them",
                    level=logging.WARNING,
                    repository=name,
                    digests=kept,
                )
            p.unlink = [d for d in p.unlink if d not in reach.reachable]

    def _sizes_freed(self, plans: Sequence[RepoPlan]) -> dict[str, int]:
        """digest -> size of the blobs named by the revisions about to be unlinked."""
        # Not kept parsed: a large sweep unlinks ~100,000 manifests.
        return self.reader.blob_sizes(d for p in plans for d in p.unlink)

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
            assert isinstance(item, Tag)
            since = iso(item.mtime)
            text = (
                f"{verb} leftover tag directory {repo}:{item.name} (no current/link since {since})"
            )
            return text, {"repository": repo, "tag": item.name}
        what = "empty repository" if p.repository.has_manifests else "repository with no manifests"
        return f"{verb} {what} {repo}", {"repository": repo}

    def _execute(self, op: _Op) -> bool:
        # Looked up in `executor` at call time (the tests replace these functions).
        kind, p, item = op
        repo: Repository = p.repository
        if kind == "tag":
            assert isinstance(item, retention.TagDecision)
            return executor.delete_tag(self.storage, repo, item.tag.name, item.tag.mtime)
        if kind == "revision":
            assert isinstance(item, str)
            return executor.unlink_revision(self.storage, repo, item, p.unlink_mtimes.get(item))
        if kind == "leftover":
            assert isinstance(item, Tag)
            return executor.remove_leftover_tag(self.storage, repo, item.name)
        if executor.remove_repository(self.storage, repo, self.hold):
            self._held_layers.append(repo.name)
            return True
        return False

    def _run(self, op: _Op, stats: SweepStats) -> bool:
        """True when the operation was done (or, in a dry run, named)."""
        # Checked before each operation, never inside one: a signal stops the sweep between
        # two tags, not halfway through a tag.
        if self.stop.is_set():
            return False
        event, counter = _EVENTS[op[0]]
        if not self.cfg.dry_run:
            try:
                if not self._execute(op):
                    # Pushed again since the scan (same tag or manifest): it stays.
                    text, fields = self._describe(op)
                    self.out.record(
                        "skipped",
                        f"kept after all, changed since the scan: {text}",
                        fields,
                        logging.WARNING,
                    )
                    return False
            except OSError as exc:
                text, fields = self._describe(op)
                fields = {**fields, "error": str(exc)}
                self.out.record("error", f"failed: {text}: {exc}", fields, logging.ERROR)
                with self._stats_lock:
                    stats.errors += 1
                return False
        with self._stats_lock:  # ops run on several threads
            setattr(stats, counter, getattr(stats, counter) + 1)
        text, fields = self._describe(op)
        fields["dry_run"] = self.cfg.dry_run
        self.out.record(event, text, fields)
        return True

    # -- garbage collection --------------------------------------------------------------
    def _collect(self, roots: dict[str, frozenset[str]], survey: Survey, stats: SweepStats) -> None:
        cfg = self.cfg
        warn_blobdescriptor(cfg.registry_config, self.out)
        self.out.emit(
            "gc_started",
            f"collecting garbage (grace {cfg.gc_grace} s, settle {cfg.gc_settle} s)",
            engine="janitor",
        )
        t0 = time.monotonic()
        collector = Collector(
            self.storage,
            self.pool,
            self.reader,
            self.out,
            self.stop,
            grace=cfg.gc_grace,
            settle=cfg.gc_settle,
            dry_run=cfg.dry_run,
            registry_log=RegistryLog(cfg.registry_log) if cfg.registry_log else None,
        )
        try:
            self._mark_and_collect(collector, roots, survey, stats, t0)
        except Exception as exc:
            # Said in the metrics too: an alert on gc_ok must see a GC that crashed.
            stats.gc_ran, stats.gc_ok, stats.gc_reason = True, False, "error"
            stats.gc_message = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if collector.registry_log is not None:
                collector.registry_log.close()

    def _mark_and_collect(
        self,
        collector: Collector,
        roots: dict[str, frozenset[str]],
        survey: Survey,
        stats: SweepStats,
        t0: float,
    ) -> None:
        cfg = self.cfg
        mark = collector.mark(roots, survey, time.time())
        stats.blobs_touched += mark.touched
        stats.phases["mark"] = round(time.monotonic() - t0, 3)
        stats.gc_ran = True
        stats.blobs_marked = len(mark.marked)
        stats.blobs_spared = mark.spared
        if not mark.complete:
            for problem in mark.problems:
                self.out.emit("gc_refused", f"gc: {problem}", level=logging.ERROR)
            stats.gc_ok = False
            stats.gc_reason = "store_unreadable"
            stats.gc_message = (
                f"no blob deleted: {len(mark.problems)} part(s) of the store could not be read"
                " or understood (above), and the janitor deletes only what a complete read"
                " proves unused; fix what they name (the mount, permissions, a link, a"
                " broken image), then sweep again"
            )
            self.out.emit("gc_failed", f"gc failed: {stats.gc_message}", level=logging.ERROR)
            if self._held_layers:
                collector.collect(mark, roots, self._held_layers, stats)
                self._held_layers = []
        elif cfg.dry_run:
            collector.report_dry_run(mark, stats)
        else:
            collector.collect(mark, roots, self._held_layers, stats)
            self._held_layers = []
            pending.clear(self.storage)
        stats.gc_duration = time.monotonic() - t0
        if stats.gc_ok:
            stats.gc_reason = "collected"
            self.out.emit(
                "gc_done",
                f"gc done in {stats.gc_duration:.1f} s: {stats.blobs_deleted} blobs deleted",
                duration=round(stats.gc_duration, 3),
                blobs_deleted=stats.blobs_deleted,
                bytes_reclaimed=stats.bytes_reclaimed,
            )

    def _settle_layers(self, stats: SweepStats) -> None:
        """Held `_layers` of removed repositories, when no collection settled them."""
        Collector(
            self.storage,
            self.pool,
            self.reader,
            self.out,
            self.stop,
            grace=self.cfg.gc_grace,
            settle=self.cfg.gc_settle,
            dry_run=False,
        ).collect(Mark(), {}, self._held_layers, stats)
        self._held_layers = []

    def _registry_gc(self, stats: SweepStats) -> None:
        cfg = self.cfg
        warn_blobdescriptor(cfg.registry_config, self.out)
        cmd = registry_gc.command(cfg.registry_bin, cfg.registry_config, dry_run=cfg.dry_run)
        self.out.emit("gc_started", f"running {' '.join(cmd)}", command=cmd)
        result = registry_gc.run(cfg.registry_bin, cfg.registry_config, dry_run=cfg.dry_run)
        # Sizes from this process's reads, and from the prune that wrote the mark (the
        # deployment runs `prune` and `gc` as separate processes).
        sizes = {**pending.sizes(self.storage), **self.reader.known_sizes()}
        if result.ok and not cfg.dry_run:
            pending.clear(self.storage)
        stats.gc_ran = True
        stats.gc_ok = result.ok
        stats.gc_reason = "collected" if result.ok else "garbage_collect_failed"
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


def warn_blobdescriptor(config_path: Path, out: Output) -> None:
    try:
        text = config_path.read_text(errors="replace")
    except OSError:
        return
    if registry_gc.config_enables_blobdescriptor(text):
        out.emit(
            "config_warning",
            f"!!! {config_path} enables storage.cache.blobdescriptor: after GC the running"
            " registry keeps believing deleted blobs exist, and a re-pushed layer is then"
            " skipped and the image cannot be pulled. Remove the cache (the shipped config has"
            " none) or restart the registry after every GC. !!!",
            level=logging.WARNING,
            registry_config=str(config_path),
        )
