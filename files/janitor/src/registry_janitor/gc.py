"""Garbage collection without stopping pushes (GC_ENGINE=janitor, the default).

1. Mark: every manifest linked as a revision in any repository is a root, whatever its age;
   the mark is their closure over index children, configs and layers (an OCI `subject` is a
   weak reference, as for the registry's own GC: it keeps nothing), each
   manifest read once. If any of them cannot be read, no blob is deleted in this run.
2. Candidates: blobs not marked whose `data` is older than the grace period (GC_GRACE). A
   blob uploaded for a manifest not pushed yet is young; so is one a push is writing now.
3. Hold: each candidate is renamed out of the registry's tree (hold.py; on an object store
   copied out, then deleted); from then on the registry answers 404 for it and a client
   uploads it again.
4. Settle (GC_SETTLE): a manifest PUT that checked its blobs before they were held finishes
   and links its revision.
5. Re-check: revisions linked now that were not roots of the mark are read (with what they
   reach); every held blob they name goes back. A repository or manifest that cannot be read
   now puts every held blob back.
6. Delete the rest, counting the bytes of each `data` deleted.

`_layers` links of deleted blobs stay, as the registry's own garbage-collect leaves them: the
registry checks the blob itself behind every link (HEAD and GET answer 404, a manifest naming
it is refused), an upload of the same blob rewrites the link, and deleting links would race
with such an upload. A repository's links go with the repository once it is empty.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from registry_janitor import store
from registry_janitor.hold import HELD_BLOBS, Hold
from registry_janitor.manifests import ManifestReader, closure
from registry_janitor.output import Output, human_bytes, iso
from registry_janitor.quarantine import Quarantine
from registry_janitor.records import SweepStats
from registry_janitor.registry_log import RegistryLog
from registry_janitor.storage import BLOBS, Stat, Storage
from registry_janitor.survey import Complete, Incomplete, Survey

log = logging.getLogger(__name__)

# Test-only: at each phase boundary the janitor writes <dir>/<phase>.reached and waits for
# <dir>/<phase>.go, so a test can act (push, kill) at an exact point. Unset in production.
PAUSE_DIR_ENV = "JANITOR_TEST_PAUSE_DIR"
PHASES = ("mark", "hold", "settle", "restore", "delete")
# A held blob that cannot be put back is tried this many times, waiting a little longer each
# time (SMB: a rename fails while another client holds a file of the directory open).
RESTORE_ATTEMPTS = 4
# Candidates held between two reads of the registry's log (registry_log.py): the smaller, the
# shorter the time a HEAD can land unseen between the read and the hold.
HOLD_BATCH = 32
RESTORE_BACKOFF = 0.5
# While blobs are held, how often the log is read for clients asking for them. A client that
# HEADed a blob an instant before its hold sends its manifest tens of milliseconds later
# (skopeo); the blob must be back before that. A read of nothing new is one stat and one read.
FOLLOW_INTERVAL = 0.02


def pause(phase: str, stop: threading.Event) -> None:
    directory = os.environ.get(PAUSE_DIR_ENV)
    if not directory:
        return
    (Path(directory) / f"{phase}.reached").touch()
    go = Path(directory) / f"{phase}.go"
    while not go.exists() and not stop.is_set():
        time.sleep(0.02)


@dataclass(frozen=True)
class Candidate:
    digest: str
    size: int
    mtime: float
    version: float  # Stat.version when marked: a later upload of the blob changes it


@dataclass
class Mark:
    marked: frozenset[str] = frozenset()
    candidates: list[Candidate] = field(default_factory=list)
    spared: int = 0  # unreferenced but younger than the grace period
    touched: int = 0  # unreferenced and old, but a client asked for it within the grace
    problems: list[str] = field(default_factory=list)  # why nothing may be deleted
    proof: Complete | None = None  # every read of the mark succeeded

    @property
    def complete(self) -> bool:
        return self.proof is not None


def _who_links(roots: Mapping[str, frozenset[str]], digest: str) -> str:
    repos = sorted(r for r, revs in roots.items() if digest in revs)
    return ", ".join(f"{r}@{digest}" for r in repos[:3]) + (" ..." if len(repos) > 3 else "")


class Collector:
    def __init__(
        self,
        storage: Storage,
        pool: Executor,
        reader: ManifestReader,
        out: Output,
        stop: threading.Event,
        *,
        grace: int,
        settle: int,
        dry_run: bool,
        registry_log: RegistryLog | None = None,
    ) -> None:
        self.storage = storage
        self.registry_log = registry_log
        self._log_gap_said = False
        self._touched_back: set[str] = set()  # held blobs put back because a client asked
        self.pool = pool
        self.reader = reader
        self.out = out
        self.stop = stop
        self.hold = Hold(storage)
        self.grace = grace
        self.settle_seconds = settle
        self.dry_run = dry_run
        self._held: dict[str, Candidate] = {}  # held now: put back if anything goes wrong
        self._layers_left: list[str] = []  # held `_layers` not settled yet
        self._held_lock = threading.Lock()

    # -- reads only ----------------------------------------------------------------------
    def mark(self, roots: Mapping[str, frozenset[str]], survey: Survey, now: float) -> Mark:
        """The mark and the candidates. `roots`: the revisions linked in every repository
        the survey read; `survey`: the reads that found them. Any read that failed, there or
        here, leaves the mark without a proof and with no candidate."""
        result = Mark()
        reach = closure(frozenset().union(*roots.values()) if roots else (), self.reader)
        quarantined = (
            {e.digest: e for e in Quarantine(self.storage).entries()} if reach.unreadable else {}
        )
        for digest in sorted(reach.unreadable):
            why = self.reader.problems.get(digest, "unreadable")
            where = _who_links(roots, digest) or f"a manifest referenced as {digest}"
            entry = quarantined.get(digest)
            if entry is not None:
                # Fail closed, and say what ends it: the manifest's blob was corrupt.
                why += (
                    f" (verify found it corrupt on {iso(entry.when)} and moved it to"
                    f" {entry.path}): push that image again, or delete its tags"
                )
            survey.gap(where, why)
        result.marked = reach.marked
        if not survey.gaps:
            self._candidates(survey, reach.marked, now, result)
            self._spare_touched(result, now)
        try:
            result.proof = survey.seal()
        except Incomplete as exc:
            result.problems = [str(g) for g in exc.gaps]
            result.candidates = []
        return result

    def _candidates(self, survey: Survey, marked: frozenset[str], now: float, result: Mark) -> None:
        """Unmarked blobs older than the grace period (through the survey: a blob that
        cannot be listed or stat'ed is a gap, its age unknown)."""
        prefixes = [e.name for e in survey.list(BLOBS) or () if e.is_dir and len(e.name) == 2]
        if self.storage.listing_is_cheap:
            # An object store lists every blob with its size and mtime: no stat per blob,
            # except for those the listing shows young: a blob the janitor put back carries
            # its older mtime in metadata that only a stat returns (s3.py).
            listed: dict[str, Stat | None] = dict(self._list_blobs(survey, prefixes))
            unmarked = sorted(d for d in listed if d not in marked)
            young = [
                d
                for d in unmarked
                if isinstance(st := listed[d], Stat) and now - st.mtime < self.grace
            ]
            listed.update(
                zip(
                    young,
                    store.pmap_batched(self.pool, lambda d: self._stat_data(survey, d), young),
                    strict=True,
                )
            )
            stats: Iterable[Stat | None] = (listed[d] for d in unmarked)
        else:
            names_by_prefix = store.pmap(
                self.pool, lambda p: survey.list(f"{BLOBS}/{p}") or [], prefixes
            )
            unmarked = [
                f"sha256:{e.name}"
                for entries in names_by_prefix
                for e in entries
                if e.is_dir and store.HEX.fullmatch(e.name) and f"sha256:{e.name}" not in marked
            ]
            stats = store.pmap_batched(self.pool, lambda d: self._stat_data(survey, d), unmarked)
        for digest, st in zip(unmarked, stats, strict=True):
            if st is None or not st.is_file:
                continue  # no data (yet): an upload being committed, or gone
            if now - st.mtime >= self.grace:
                result.candidates.append(Candidate(digest, st.size, st.mtime, st.version))
            else:
                result.spared += 1

    def _spare_touched(self, result: Mark, now: float) -> None:
        """Candidates a client touched within the grace (the registry's log) stay: a HEAD
        of an old blob is how a push that will name it starts."""
        if self.registry_log is None or not result.candidates:
            return
        seen = self.registry_log.read_all()
        if seen is None:
            self._log_gap("cannot read it")
            return
        keep = {d for d, when in seen.items() if now - when < self.grace}
        if keep:
            before = len(result.candidates)
            result.candidates = [c for c in result.candidates if c.digest not in keep]
            result.touched = before - len(result.candidates)

    def _log_gap(self, why: str) -> None:
        if self._log_gap_said:
            return
        self._log_gap_said = True
        self.out.emit(
            "registry_log_gap",
            f"the registry's log ({why}) does not tell every blob clients asked for: this run"
            " holds and puts back as it does without the log",
            level=logging.WARNING,
        )

    def _touched_since(self) -> set[str]:
        """Blobs the registry logged as touched since the last read."""
        if self.registry_log is None:
            return set()
        found, complete = self.registry_log.follow()
        if not complete:
            self._log_gap("rotated, cut or unreadable")
        return set(found)

    def _list_blobs(self, survey: Survey, prefixes: list[str]) -> Iterator[tuple[str, Stat | None]]:
        """digest -> stat of its `data` (None: no data: an upload being committed), for
        every blob directory below the two-character prefixes, one listing per prefix."""
        for files in store.pmap(self.pool, lambda p: survey.walk(f"{BLOBS}/{p}"), prefixes):
            found: dict[str, Stat | None] = {}
            for name, st in files:
                hexpart, _, rest = name.partition("/")
                if not store.HEX.fullmatch(hexpart):
                    continue
                if rest == "data":
                    found[hexpart] = st
                else:
                    found.setdefault(hexpart, None)
            yield from ((f"sha256:{h}", st) for h, st in found.items())

    def _stat_data(self, survey: Survey, digest: str) -> Stat | None:
        return survey.stat(store.blob_data(digest))

    # -- changes -------------------------------------------------------------------------
    def collect(
        self,
        mark: Mark,
        roots: Mapping[str, frozenset[str]],
        held_layers: list[str],
        stats: SweepStats,
    ) -> None:
        """Hold, settle, re-check, put back, delete. `held_layers`: repositories whose
        `_layers` the prune held; they are settled here too.

        Everything from the first hold to the last delete is one transaction: whatever
        raises on the way, every blob still held is put back before the error propagates.
        """
        self._layers_left = list(held_layers)
        try:
            self._collect(mark, roots, held_layers, stats)
        except BaseException:
            left = self._held_now()
            if left:
                log.error("garbage collection failed: putting back %d held blobs", len(left))
                try:
                    self._restore(left)
                except OSError as exc:  # named above, blob by blob; the first error matters
                    log.error("%s", exc)
            for repo in self._layers_left:  # back where they were: the safe side
                self._put_back_layers(repo)
            raise

    def _put_back_layers(self, repo: str) -> None:
        try:
            self.hold.restore_layers(repo)
        except OSError as exc:
            self.out.emit(
                "error",
                f"failed: put back the held layer links of {repo} ({exc}); the next run puts"
                " them back first thing",
                level=logging.ERROR,
                repository=repo,
            )

    def _held_now(self) -> set[str]:
        with self._held_lock:
            return set(self._held)

    def _collect(
        self,
        mark: Mark,
        roots: Mapping[str, frozenset[str]],
        held_layers: list[str],
        stats: SweepStats,
    ) -> None:
        t = time.monotonic()
        pause("mark", self.stop)
        held: dict[str, Candidate] = {}
        if mark.proof is not None:
            held = self._hold_all(mark.candidates, mark.proof, stats)
        stats.phases["hold"] = round(time.monotonic() - t, 3)
        pause("hold", self.stop)
        if held or held_layers:
            t = time.monotonic()
            self._settle()
            stats.phases["settle"] = round(time.monotonic() - t, 3)
        pause("settle", self.stop)
        t = time.monotonic()
        proof: Complete | None = None
        if self.stop.is_set():
            log.warning("stopped: putting back %d held blobs", len(held))
            restored = set(held)
            self._restore(restored)
        else:
            restored, proof = self._recheck(roots, held)
            if held and proof is None:
                if stats.gc_ok:
                    stats.gc_reason = "recheck_unreadable"
                stats.gc_ok = False
                stats.gc_message = "no blob deleted: the re-check could not read the store"
        for repo in held_layers:
            try:
                back = self.hold.settle_layers(repo)
            except OSError as exc:
                # Cannot tell whether a push reached it: its links go back (the repository
                # reappears empty, and a later sweep removes it again).
                log.warning(
                    "cannot settle the layer links of %s (%s): putting them back", repo, exc
                )
                stats.errors += 1
                self._put_back_layers(repo)
                continue
            finally:
                self._layers_left.remove(repo)
            if back:
                self.out.emit(
                    "layers_restored",
                    f"put back the layer links of {repo}: a push reached it while it was removed",
                    level=logging.WARNING,
                    repository=repo,
                )
        self._put_back_touched()
        restored |= self._touched_back
        stats.blobs_restored += len(restored)
        stats.phases["restore"] = round(time.monotonic() - t, 3)
        pause("restore", self.stop)
        t = time.monotonic()
        doomed = [c for c in held.values() if c.digest not in restored]
        if doomed and proof is not None:
            results = self._drop_all(doomed, proof)
            for c, ok in zip(doomed, results, strict=True):
                if ok:
                    stats.blobs_deleted += 1
                    stats.bytes_reclaimed += c.size
                    self._record(c)
                else:
                    stats.errors += 1
        stats.phases["delete"] = round(time.monotonic() - t, 3)
        pause("delete", self.stop)

    def _hold_all(
        self, candidates: list[Candidate], proof: Complete, stats: SweepStats
    ) -> dict[str, Candidate]:
        """Holds every candidate it can. `proof`: the mark that chose them was complete. A
        blob that cannot be held (an error: Samba refuses to rename a directory holding an
        open file) stays in place, named in a warning: it is not deleted in this run."""
        del proof  # asked for, not read: only a complete mark may hold anything
        failed: list[tuple[str, str]] = []

        def one(c: Candidate) -> None:
            if self.stop.is_set():
                return
            try:
                # Re-checked right before: an upload of the same blob since the mark changed it.
                st = self.storage.stat(store.blob_data(c.digest))
                if st.version != c.version or not self.hold.hold_blob(c.digest):
                    return
            except FileNotFoundError:
                return
            except Exception as exc:  # noqa: BLE001 every error: the blob stays, nothing escapes
                failed.append((c.digest, str(getattr(exc, "strerror", None) or exc)))
                return
            with self._held_lock:
                self._held[c.digest] = c

        for i in range(0, len(candidates), HOLD_BATCH):
            # The barrier: every HEAD answered before now is in the log; a blob it names
            # is not held (its client may PUT a manifest naming it any moment).
            touched = self._touched_since()
            batch = [c for c in candidates[i : i + HOLD_BATCH] if c.digest not in touched]
            stats.blobs_touched += len(candidates[i : i + HOLD_BATCH]) - len(batch)
            list(store.pmap_batched(self.pool, one, batch))
            self._put_back_touched()
        for digest, why in sorted(failed):
            self.out.emit(
                "blob_not_held",
                f"cannot hold blob {digest} ({why}): it stays, and is not deleted in this run",
                level=logging.WARNING,
                digest=digest,
                error=why,
            )
        stats.blobs_not_held += len(failed)
        with self._held_lock:
            return dict(self._held)

    def _settle(self) -> None:
        deadline = time.monotonic() + self.settle_seconds
        while not self.stop.is_set():
            self._put_back_touched()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, FOLLOW_INTERVAL))

    def _put_back_touched(self) -> None:
        """A held blob a client asks for (HEAD, GET, mount, or a manifest refused naming it)
        goes back at once: its push is in flight. Nothing held, nothing to read: a mark with
        no candidate never opened the log, which is no gap."""
        held = self._held_now()
        if not held:
            return
        back = self._touched_since() & held
        if back:
            self._restore(back)
            self._touched_back |= back
            self.out.emit(
                "blobs_restored",
                f"put back {len(back)} held blob(s) at once: a client asked for them",
                level=logging.INFO,
                count=len(back),
            )

    def _recheck(
        self, roots: Mapping[str, frozenset[str]], held: dict[str, Candidate]
    ) -> tuple[set[str], Complete | None]:
        """Digests put back (what manifests linked since the mark reach), and the proof that
        the re-check read everything. Without it every held blob goes back."""
        if not held:
            return set(), None
        survey = Survey(self.storage)
        now = store.linked_revisions(survey, self.pool)
        new = {d for repo, revs in now.items() for d in revs - roots.get(repo, frozenset())}
        restored: set[str] = set()
        seen: set[str] = set()
        frontier = set(new)
        while frontier and not survey.gaps:
            seen |= frontier
            back = (frontier & held.keys()) - restored
            self._restore(back)
            restored |= back
            for d in back:
                self.reader.forget(d)
            nxt: set[str] = set()
            for digest, m in self.reader.read_many(frontier).items():
                if m is None and digest not in new and digest in self.reader.plain:
                    continue  # an index entry that is a plain blob: its parent names it
                if m is None:
                    why = self.reader.problems.get(digest, "unreadable")
                    survey.gap(digest, f"a manifest pushed during garbage collection: {why}")
                    continue
                blobs = {b for b, _ in m.blobs} & held.keys()
                self._restore(blobs - restored)
                restored |= blobs
                nxt.update(m.children)
            frontier = nxt - seen
        try:
            proof = survey.seal()
        except Incomplete as exc:
            self.out.emit(
                "gc_recheck_failed",
                f"cannot re-read the store ({exc}): putting back all {len(held)} held blobs",
                level=logging.ERROR,
            )
            rest = set(held) - restored
            self._restore(rest)
            return restored | rest, None
        if restored:
            self.out.emit(
                "blobs_restored",
                f"put back {len(restored)} held blobs: manifests pushed during garbage"
                f" collection name them",
                level=logging.WARNING,
                count=len(restored),
            )
        return restored, proof

    def _restore(self, digests: set[str]) -> None:
        """Put held blobs back. One that fails is tried again a few times; one still held
        after that is named (the next run puts it back first thing) and never deleted."""
        failed = {d: "" for d in digests}
        for attempt in range(RESTORE_ATTEMPTS):
            if attempt:
                time.sleep(RESTORE_BACKOFF * attempt)
            results = store.pmap_batched(self.pool, self._restore_one, sorted(failed))
            failed = {d: why for d, why in zip(sorted(failed), results, strict=True) if why}
            if not failed:
                return
        for digest, why in sorted(failed.items()):
            self.out.emit(
                "error",
                f"failed: put back held blob {digest} ({why}): it stays in {HELD_BLOBS} until"
                " the next run puts it back; a pull of it fails until then",
                level=logging.ERROR,
                digest=digest,
                error=why,
            )
        raise OSError(f"{len(failed)} held blob(s) could not be put back: {', '.join(failed)}")

    def _restore_one(self, digest: str) -> str:
        """ "" when the blob is back, else why not."""
        try:
            self.hold.restore_blob(digest)
        except Exception as exc:  # noqa: BLE001 every error: keep putting back the others
            return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__
        with self._held_lock:
            self._held.pop(digest, None)
        return ""

    def _drop_all(self, doomed: list[Candidate], proof: Complete) -> list[bool]:
        """Deletes held blobs; `proof`: the re-check read everything."""
        del proof  # asked for, not read: only a complete re-check may delete anything
        if self.storage.renames:
            return list(store.pmap_batched(self.pool, self._drop, doomed))
        # An object store: batches of 1,000 keys per request, the batches in parallel.
        batches = [doomed[i : i + 1000] for i in range(0, len(doomed), 1000)]
        failed: dict[str, OSError] = {}
        for errors in store.pmap(
            self.pool, lambda b: self.hold.drop_blobs([c.digest for c in b]), batches
        ):
            failed.update(errors)
        for digest, exc in failed.items():
            self._drop_failed(digest, exc)
        with self._held_lock:
            for c in doomed:
                if c.digest not in failed:
                    self._held.pop(c.digest, None)
        return [c.digest not in failed for c in doomed]

    def _drop(self, c: Candidate) -> bool:
        try:
            self.hold.drop_blob(c.digest)
        except OSError as exc:
            self._drop_failed(c.digest, exc)
            return False
        with self._held_lock:
            self._held.pop(c.digest, None)
        return True

    def _drop_failed(self, digest: str, exc: OSError) -> None:
        self.out.emit(
            "error",
            f"failed: delete held blob {digest}: {exc}; the next run retries",
            level=logging.ERROR,
            digest=digest,
            error=str(exc),
        )

    def _record(self, c: Candidate) -> None:
        verb = "would delete" if self.dry_run else "deleted"
        self.out.emit(
            "blob_deleted",
            f"{verb} blob {c.digest} ({human_bytes(c.size)}, written {iso(c.mtime)})",
            level=logging.INFO if self.dry_run else logging.DEBUG,
            digest=c.digest,
            size=c.size,
            written=iso(c.mtime),
            dry_run=self.dry_run,
        )

    def report_dry_run(self, mark: Mark, stats: SweepStats) -> None:
        for c in sorted(mark.candidates, key=lambda c: c.digest):
            self._record(c)
        stats.blobs_deleted = len(mark.candidates)
        stats.bytes_reclaimed = sum(c.size for c in mark.candidates)
