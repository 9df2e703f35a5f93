"""Garbage collection without stopping pushes (GC_ENGINE=janitor, the default).

1. Mark: every manifest linked as a revision in any repository is a root, whatever its age;
   the mark is their closure over index children, OCI subjects, configs and layers, each
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
from registry_janitor.hold import Hold
from registry_janitor.manifests import ManifestReader, closure
from registry_janitor.output import Output, human_bytes, iso
from registry_janitor.quarantine import Quarantine
from registry_janitor.records import SweepStats
from registry_janitor.storage import BLOBS, Stat, Storage

log = logging.getLogger(__name__)

# Test-only: at each phase boundary the janitor writes <dir>/<phase>.reached and waits for
# <dir>/<phase>.go, so a test can act (push, kill) at an exact point. Unset in production.
PAUSE_DIR_ENV = "JANITOR_TEST_PAUSE_DIR"
PHASES = ("mark", "hold", "settle", "restore", "delete")


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


@dataclass
class Mark:
    marked: frozenset[str] = frozenset()
    candidates: list[Candidate] = field(default_factory=list)
    spared: int = 0  # unreferenced but younger than the grace period
    problems: list[str] = field(default_factory=list)  # why nothing may be deleted

    @property
    def complete(self) -> bool:
        return not self.problems


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
    ) -> None:
        self.storage = storage
        self.pool = pool
        self.reader = reader
        self.out = out
        self.stop = stop
        self.hold = Hold(storage)
        self.grace = grace
        self.settle_seconds = settle
        self.dry_run = dry_run

    # -- reads only ----------------------------------------------------------------------
    def mark(
        self, roots: Mapping[str, frozenset[str]], now: float, unreadable_repos: list[str]
    ) -> Mark:
        """The mark and the candidates; `unreadable_repos` are repositories the scan could not
        read completely (their revisions are unknown, so nothing may be deleted)."""
        result = Mark()
        for repo in unreadable_repos:
            result.problems.append(f"repository {repo} could not be read completely")
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
            result.problems.append(f"{where}: {why}")
        result.marked = reach.marked
        if not result.complete:
            return result
        prefixes = [p for p in store.list_names(self.storage, BLOBS) if len(p) == 2]
        if self.storage.listing_is_cheap:
            # An object store lists every blob with its size and mtime: no stat per blob,
            # except for those the listing shows young: a blob the janitor put back carries
            # its older mtime in metadata that only a stat returns (s3.py).
            listed: dict[str, Stat | str | None] = dict(self._list_blobs(prefixes))
            unmarked = sorted(d for d in listed if d not in reach.marked)
            young = [
                d
                for d in unmarked
                if isinstance(st := listed[d], Stat) and now - st.mtime < self.grace
            ]
            listed.update(
                zip(young, store.pmap_batched(self.pool, self._stat_data, young), strict=True)
            )
            stats: Iterable[Stat | str | None] = (listed[d] for d in unmarked)
        else:
            names_by_prefix = store.pmap(
                self.pool, lambda p: store.list_names(self.storage, f"{BLOBS}/{p}"), prefixes
            )
            unmarked = [
                f"sha256:{h}"
                for names in names_by_prefix
                for h in names
                if store.HEX.fullmatch(h) and f"sha256:{h}" not in reach.marked
            ]
            stats = store.pmap_batched(self.pool, self._stat_data, unmarked)
        for digest, st in zip(unmarked, stats, strict=True):
            if isinstance(st, str):
                result.problems.append(f"blob {digest}: {st}")
            elif st is None:
                continue  # no data (yet): an upload being committed, or gone
            elif now - st.mtime >= self.grace:
                result.candidates.append(Candidate(digest, st.size, st.mtime))
            else:
                result.spared += 1
        if result.problems:  # a blob we cannot stat: we cannot tell its age either
            result.candidates = []
        return result

    def _list_blobs(self, prefixes: list[str]) -> Iterator[tuple[str, Stat | None]]:
        """digest -> stat of its `data` (None: no data: an upload being committed), for
        every blob directory below the two-character prefixes, one listing per prefix."""
        for prefix, files in zip(
            prefixes,
            store.pmap(self.pool, lambda p: self.storage.walk(f"{BLOBS}/{p}"), prefixes),
            strict=True,
        ):
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

    def _stat_data(self, digest: str) -> Stat | str | None:
        try:
            st = self.storage.stat(store.blob_data(digest))
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"cannot stat its data: {exc.strerror or exc}"
        return st if st.is_file else None

    # -- changes -------------------------------------------------------------------------
    def collect(
        self,
        mark: Mark,
        roots: Mapping[str, frozenset[str]],
        held_layers: list[str],
        stats: SweepStats,
    ) -> None:
        """Hold, settle, re-check, put back, delete. `held_layers`: repositories whose
        `_layers` the prune held; they are settled here too."""
        t = time.monotonic()
        pause("mark", self.stop)
        held = self._hold_all(mark.candidates)
        stats.phases["hold"] = round(time.monotonic() - t, 3)
        pause("hold", self.stop)
        if held or held_layers:
            t = time.monotonic()
            self._settle()
            stats.phases["settle"] = round(time.monotonic() - t, 3)
        pause("settle", self.stop)
        t = time.monotonic()
        if self.stop.is_set():
            log.warning("stopped: putting back %d held blobs", len(held))
            restored = set(held)
            self._restore(restored)
        else:
            restored = self._recheck(roots, held)
        for repo in held_layers:
            if self.hold.settle_layers(repo):
                self.out.emit(
                    "layers_restored",
                    f"put back the layer links of {repo}: a push reached it while it was removed",
                    level=logging.WARNING,
                    repository=repo,
                )
        stats.blobs_restored += len(restored)
        stats.phases["restore"] = round(time.monotonic() - t, 3)
        pause("restore", self.stop)
        t = time.monotonic()
        doomed = [c for c in held.values() if c.digest not in restored]
        results = self._drop_all(doomed)
        for c, ok in zip(doomed, results, strict=True):
            if ok:
                stats.blobs_deleted += 1
                stats.bytes_reclaimed += c.size
                self._record(c)
            else:
                stats.errors += 1
        stats.phases["delete"] = round(time.monotonic() - t, 3)
        pause("delete", self.stop)

    def _hold_all(self, candidates: list[Candidate]) -> dict[str, Candidate]:
        def one(c: Candidate) -> bool:
            if self.stop.is_set():
                return False
            # Re-checked right before: an upload of the same blob since the mark refreshed it.
            try:
                st = self.storage.stat(store.blob_data(c.digest))
            except FileNotFoundError:
                return False
            if st.mtime != c.mtime:
                return False
            return self.hold.hold_blob(c.digest)

        return {
            c.digest: c
            for c, ok in zip(
                candidates, store.pmap_batched(self.pool, one, candidates), strict=True
            )
            if ok
        }

    def _settle(self) -> None:
        deadline = time.monotonic() + self.settle_seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    def _recheck(self, roots: Mapping[str, frozenset[str]], held: dict[str, Candidate]) -> set[str]:
        """Digests put back: what manifests linked since the mark reach."""
        if not held:
            return set()
        try:
            now = store.linked_revisions(self.storage, self.pool)
        except OSError as exc:
            self.out.emit(
                "gc_recheck_failed",
                f"cannot re-read the repositories ({exc}): putting back all {len(held)} held blobs",
                level=logging.ERROR,
            )
            self._restore(set(held))
            return set(held)
        new = {d for repo, revs in now.items() for d in revs - roots.get(repo, frozenset())}
        restored: set[str] = set()
        seen: set[str] = set()
        frontier = set(new)
        while frontier:
            seen |= frontier
            back = (frontier & held.keys()) - restored
            self._restore(back)
            restored |= back
            for d in back:
                self.reader.forget(d)
            nxt: set[str] = set()
            for digest, m in self.reader.read_many(frontier).items():
                if m is None:
                    why = self.reader.problems.get(digest, "unreadable")
                    self.out.emit(
                        "gc_recheck_failed",
                        f"a manifest pushed during garbage collection cannot be read"
                        f" ({digest}: {why}): putting back all held blobs",
                        level=logging.ERROR,
                        digest=digest,
                    )
                    rest = set(held) - restored
                    self._restore(rest)
                    return restored | rest
                blobs = {b for b, _ in m.blobs} & held.keys()
                self._restore(blobs - restored)
                restored |= blobs
                nxt.update(m.children)
            frontier = nxt - seen
        if restored:
            self.out.emit(
                "blobs_restored",
                f"put back {len(restored)} held blobs: manifests pushed during garbage"
                f" collection name them",
                level=logging.WARNING,
                count=len(restored),
            )
        return restored

    def _restore(self, digests: set[str]) -> None:
        list(store.pmap_batched(self.pool, self.hold.restore_blob, sorted(digests)))

    def _drop_all(self, doomed: list[Candidate]) -> list[bool]:
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
        return [c.digest not in failed for c in doomed]

    def _drop(self, c: Candidate) -> bool:
        try:
            self.hold.drop_blob(c.digest)
        except OSError as exc:
            self._drop_failed(c.digest, exc)
            return False
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
