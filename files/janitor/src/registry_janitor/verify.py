"""`registry-janitor verify`: re-hash stored blobs and take corrupt ones out of service.

Nothing in the registry checks stored content after an upload, and some SMB shares have
been seen to store blobs whose bytes do not match their digest. A pull of such a blob fails
at the client's digest check, and a push of the same layer is answered "already exists", so
the damage stays until someone removes the blob.

One run:
1. Lists every blob (`data` stat'ed for size and mtime) and every linked revision.
2. Picks what to hash, within the budget (VERIFY_BUDGET, bytes and/or run time):
   first blobs whose current content was never verified, newest first (CI pulls what it
   pushed recently, and that is where a write went wrong); then blobs verified longer ago
   than VERIFY_INTERVAL, least recently verified first. A verified blob is content that
   never changes in place, so it is not hashed again before the interval; a blob deleted and
   uploaded again (another size or mtime) counts as never verified.
3. Hashes them on the thread pool (large reads; hashlib releases the GIL while it hashes).
   A mismatch is read and hashed a second time before it is believed. A corrupt blob's
   directory is moved into the quarantine (quarantine.py): the registry then answers 404, so
   the next push uploads the layer again, and pulls fail cleanly.
4. Commits what it verified every few seconds (a new small journal file, written atomically)
   so a killed run loses at most the last few seconds of work; at the end the journal is
   folded into the state file.
5. Reports every corrupt blob, every linked manifest whose blob is missing or cannot be
   parsed, and every quarantined blob not pushed again yet, each with the tags whose images
   it breaks (read from the manifests the tags reach).

The order, the byte budget and the state on the share are in verified.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Executor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from registry_janitor import manifests, store
from registry_janitor.backends import open_storage
from registry_janitor.config import Budget, Config
from registry_janitor.gc import pause
from registry_janitor.hold import Hold
from registry_janitor.output import Output, human_bytes, human_duration, iso
from registry_janitor.quarantine import QUARANTINE_DIR, Entry, Quarantine
from registry_janitor.records import VerifyStats
from registry_janitor.storage import BLOBS, Storage
from registry_janitor.survey import Survey
from registry_janitor.verified import STATE_FILE, Blob, Record, State, queue, take

log = logging.getLogger(__name__)

# Bytes per read: few round trips on a network filesystem (the cifs client reads up to 4 MiB
# per request) and few Python-level steps per byte hashed.
CHUNK = 4 << 20
# What a killed run can lose: at most this much time, or this many blobs, of verification.
COMMIT_SECONDS = 10.0
COMMIT_BLOBS = 500
# Test-only: commit after this many blobs; sleep this long before each blob.
BATCH_ENV = "JANITOR_TEST_VERIFY_BATCH"
DELAY_ENV = "JANITOR_TEST_VERIFY_DELAY"
# A blob whose `data` changed less than this long ago is never moved out of service: the
# registry writes manifest blobs in place, so one being written reads as "corrupt" for a
# moment. It is reported and checked again by the next run. (Tests lower it.)
MIN_AGE = 600
MIN_AGE_ENV = "JANITOR_TEST_VERIFY_MIN_AGE"


@dataclass
class _Result:
    blob: Blob
    outcome: str  # ok, corrupt, flaky, young, changed, gone, error, skipped
    actual: str = ""  # digest of what was read, when it is not the blob's
    error: str = ""
    unparseable: bool = False  # a linked manifest, intact, that the janitor cannot parse
    at: float = 0.0


class _Stopped(Exception):
    pass


@dataclass
class _Findings:
    corrupt: dict[str, str] = field(default_factory=dict)  # digest -> quarantine entry
    missing: set[str] = field(default_factory=set)  # linked manifests without a blob
    unreadable: set[str] = field(default_factory=set)  # linked manifests that do not parse
    open_entries: dict[str, str] = field(default_factory=dict)  # earlier quarantined, missing

    def __bool__(self) -> bool:
        return bool(self.corrupt or self.missing or self.unreadable or self.open_entries)


class Verifier:
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
        self.quarantine = Quarantine(self.storage)
        self.state = State(self.storage)
        self.dry_run = cfg.dry_run
        self._deadline: float | None = None
        self._manifests: frozenset[str] = frozenset()
        self._reports: dict[str, dict[str, Any]] = {}  # quarantine entry -> its report
        self._delay = float(os.environ.get(DELAY_ENV) or 0)
        self._min_age = float(os.environ.get(MIN_AGE_ENV) or MIN_AGE)
        self._batch = int(os.environ.get(BATCH_ENV) or COMMIT_BLOBS)

    def run(self, stats: VerifyStats | None = None) -> VerifyStats:
        """Fills `stats` as it goes, so a run that raises still reports what it did."""
        start = time.monotonic()
        stats = stats if stats is not None else VerifyStats(dry_run=self.dry_run)
        budget: Budget = self.cfg.verify_budget
        if budget.seconds is not None:
            self._deadline = start + budget.seconds
        try:
            self._run(stats, budget)
        finally:
            self.storage.close()
            stats.duration = time.monotonic() - start
            stats.stopped = self.stop.is_set()
        return stats

    def _run(self, stats: VerifyStats, budget: Budget) -> None:
        t = time.monotonic()
        revisions = self._revisions(stats)
        self._manifests = frozenset().union(*revisions.values()) if revisions else frozenset()
        blobs, complete = self._list_blobs(stats)
        stats.blobs = len(blobs)
        records = self.state.load()
        now = time.time()
        new, due = queue(blobs, records, now, self.cfg.verify_interval)
        todo = take(new + due, budget.bytes)
        stats.phases["list"] = round(time.monotonic() - t, 3)
        self.out.emit(
            "verify_plan",
            f"{len(blobs)} blobs in the store: {len(new)} never verified"
            f" ({human_bytes(sum(b.size for b in new))}), {len(due)} due again;"
            f" budget {budget}: {len(todo)} blobs ({human_bytes(sum(b.size for b in todo))})"
            " in this run",
            blobs=len(blobs),
            never_verified=len(new),
            due=len(due),
            selected=len(todo),
            budget=str(budget),
        )
        if len(todo) < len(new) + len(due):
            stats.limit = "bytes"

        t = time.monotonic()
        findings = _Findings()
        verified = self._hash_all(todo, stats, findings)
        stats.hash_seconds = round(time.monotonic() - t, 3)
        stats.phases["hash"] = stats.hash_seconds
        if self.stop.is_set():
            stats.limit = "stop"

        done = set(verified) | set(findings.corrupt)
        left = [b for b in new if b.digest not in done]
        stats.unverified = len(left)
        stats.oldest_unverified = min((b.mtime for b in left), default=None)
        stats.due = sum(1 for b in due if b.digest not in done)
        if not self.dry_run:
            records.update(verified)
            present = {b.digest for b in blobs} - set(findings.corrupt)
            if complete:  # forget blobs that are gone (a listing with errors proves nothing)
                records = {d: r for d, r in records.items() if d in present}
            else:
                records = {d: r for d, r in records.items() if d not in findings.corrupt}
            try:
                self.state.compact(records)
            except OSError as exc:
                self._error(f"cannot write {STATE_FILE}: {exc}; the journal keeps this run")
                stats.errors += 1

        t = time.monotonic()
        self._missing_manifests(blobs, findings)
        entries = self.quarantine.entries(reports=False)
        self._open_entries(blobs, entries, findings)
        if findings:
            self._report(findings, stats)
        stats.quarantined = len(entries)
        stats.phases["report"] = round(time.monotonic() - t, 3)

    # -- listing ---------------------------------------------------------------------------
    def _revisions(self, stats: VerifyStats) -> dict[str, frozenset[str]]:
        survey = Survey(self.storage)
        found = store.linked_revisions(survey, self.pool)
        for gap in survey.gaps:
            self._error(f"cannot read the repositories ({gap}): manifests below not checked")
            stats.errors += 1
        return found

    def _list_blobs(self, stats: VerifyStats) -> tuple[list[Blob], bool]:
        """Every blob with its `data` stat; False when part of the listing failed."""
        if self.storage.listing_is_cheap:
            return self._walk_blobs(stats)
        prefixes = [p for p in store.list_names(self.storage, BLOBS) if len(p) == 2]

        def names(prefix: str) -> list[str] | str:
            try:
                return store.list_names(self.storage, f"{BLOBS}/{prefix}")
            except OSError as exc:
                return f"cannot list {BLOBS}/{prefix}: {exc.strerror or exc}"

        complete = True
        digests: list[str] = []
        for listed in store.pmap(self.pool, names, prefixes):
            if isinstance(listed, str):
                self._error(listed)
                stats.errors += 1
                complete = False
                continue
            digests += (f"sha256:{h}" for h in listed if store.HEX.fullmatch(h))

        def stat(digest: str) -> Blob | str | None:
            try:
                st = self.storage.stat(store.blob_data(digest))
            except FileNotFoundError:
                return None  # a directory without data: an upload being committed
            except OSError as exc:
                return f"cannot stat blob {digest}: {exc.strerror or exc}"
            return Blob(digest, st.size, st.mtime) if st.is_file else None

        blobs = []
        for found in store.pmap_batched(self.pool, stat, digests):
            if isinstance(found, str):
                self._error(found)
                stats.errors += 1
                complete = False
            elif found is not None:
                blobs.append(found)
        return blobs, complete

    def _walk_blobs(self, stats: VerifyStats) -> tuple[list[Blob], bool]:
        """On an object store: every blob with the size and mtime its listing shows (one
        request per 1,000 blobs instead of a stat each)."""
        try:
            files = self.storage.walk(BLOBS)
        except OSError as exc:
            self._error(f"cannot list {BLOBS}: {exc.strerror or exc}")
            stats.errors += 1
            return [], False
        blobs = []
        for name, st in files:
            prefix, hexpart, leaf = (name.split("/") + ["", ""])[:3]
            if leaf == "data" and store.HEX.fullmatch(hexpart) and hexpart[:2] == prefix:
                blobs.append(Blob(f"sha256:{hexpart}", st.size, st.mtime))
        return blobs, True

    # -- hashing ---------------------------------------------------------------------------
    def _hash_all(
        self, todo: list[Blob], stats: VerifyStats, findings: _Findings
    ) -> dict[str, Record]:
        verified: dict[str, Record] = {}
        batch: dict[str, Record] = {}
        committed = time.monotonic()
        for r in store.pmap_batched(self.pool, self._check, todo):
            b = r.blob
            if r.outcome == "ok":
                verified[b.digest] = batch[b.digest] = Record(r.at, b.size, b.mtime)
                stats.blobs_verified += 1
                stats.bytes_verified += b.size
                if r.unparseable:
                    findings.unreadable.add(b.digest)
            elif r.outcome == "corrupt":
                findings.corrupt[b.digest] = self._quarantine(r, stats)
            elif r.outcome == "young":
                self.out.emit(
                    "blob_read_mismatch",
                    f"blob {b.digest}: hashed to {r.actual}, but its data changed less than"
                    f" {human_duration(int(self._min_age))} ago (a write in progress?); not moved,"
                    " checked again next run",
                    level=logging.WARNING,
                    digest=b.digest,
                    actual=r.actual,
                )
            elif r.outcome == "flaky":
                self.out.emit(
                    "blob_read_mismatch",
                    f"blob {b.digest}: one read hashed to {r.actual}, the next one matched;"
                    " not moved (a read went wrong, not the stored bytes?); checked again next"
                    " run",
                    level=logging.WARNING,
                    digest=b.digest,
                    actual=r.actual,
                )
            elif r.outcome == "error":
                self._error(f"cannot read blob {b.digest}: {r.error}", digest=b.digest)
                stats.errors += 1
            elif r.outcome == "skipped" and stats.limit != "stop":
                stats.limit = "stop" if self.stop.is_set() else "time"
            if batch and (
                len(batch) >= self._batch or time.monotonic() - committed >= COMMIT_SECONDS
            ):
                self._commit(batch, stats)
                batch = {}
                committed = time.monotonic()
        if batch:
            self._commit(batch, stats)
        return verified

    def _commit(self, batch: dict[str, Record], stats: VerifyStats) -> None:
        if self.dry_run:
            return
        try:
            self.state.commit(batch)
        except OSError as exc:
            self._error(f"cannot record {len(batch)} verified blobs: {exc}")
            stats.errors += 1
            return
        self.out.emit(
            "verify_committed",
            f"recorded {len(batch)} verified blobs",
            level=logging.DEBUG,
            blobs=len(batch),
        )
        pause("verify_committed", self.stop)

    def _check(self, blob: Blob) -> _Result:
        if self.stop.is_set() or (
            self._deadline is not None and time.monotonic() >= self._deadline
        ):
            return _Result(blob, "skipped")
        if self._delay:
            time.sleep(self._delay)
        keep = blob.digest in self._manifests and blob.size <= manifests.MANIFEST_MAX
        try:
            actual, content, _ = self._hash(blob, keep)
            if actual == blob.digest:
                unparseable = content is not None and manifests.parse(blob.digest, content) is None
                return _Result(blob, "ok", unparseable=unparseable, at=time.time())
            # Read and hash it again before believing it: a good blob moved out of service
            # breaks the images that use it until they are pushed again.
            st = self.storage.stat(store.blob_data(blob.digest))
            # An object store's listing and stat can date one object differently (s3.py:
            # a copy carries its source's mtime); there the size tells a replaced blob, and
            # a replacement (same digest, so same content) hashes right the second time.
            if self.storage.listing_is_cheap:
                changed = st.size != blob.size
            else:
                changed = (st.size, st.mtime) != (blob.size, blob.mtime)
            if changed:
                return _Result(blob, "changed")
            if time.time() - st.mtime < self._min_age:
                return _Result(blob, "young", actual=actual)
            # The second read must not come from the first one's cached pages.
            again, _, read = self._hash(blob, False, fresh=True)
        except _Stopped:
            return _Result(blob, "skipped")
        except FileNotFoundError:
            return _Result(blob, "gone")
        except OSError as exc:
            return _Result(blob, "error", error=str(exc.strerror or exc))
        if again == blob.digest:
            return _Result(blob, "flaky", actual=actual)
        if read != st.size:
            # Fewer (or more) bytes than the file has: the read went wrong, not the content.
            return _Result(blob, "error", error=f"read {read} of {st.size} bytes")
        return _Result(blob, "corrupt", actual=again)

    def _hash(
        self, blob: Blob, keep: bool, *, fresh: bool = False
    ) -> tuple[str, bytes | None, int]:
        """(digest of the content, the content when `keep`, bytes read). `fresh`: not from
        the client's cache (storage.read_chunks)."""
        h = hashlib.sha256()
        parts: list[bytes] | None = [] if keep else None
        read = 0
        chunks = self.storage.read_chunks(store.blob_data(blob.digest), CHUNK, fresh=fresh)
        with closing(chunks):
            for chunk in chunks:
                if self.stop.is_set():
                    raise _Stopped
                h.update(chunk)
                read += len(chunk)
                if parts is not None:
                    parts.append(bytes(chunk))
        return f"sha256:{h.hexdigest()}", (b"".join(parts) if parts is not None else None), read

    def _quarantine(self, r: _Result, stats: VerifyStats) -> str:
        """Moves a corrupt blob into the quarantine; returns where it went ("" in a dry run
        or when it could not be moved)."""
        stats.corrupt.append(r.blob.digest)
        if self.dry_run:
            return ""
        report = {
            "found": "content does not match the digest",
            "content_digest": r.actual,
            "size": r.blob.size,
            "written": iso(r.blob.mtime),
        }
        try:
            entry = self.quarantine.put(r.blob.digest, report)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            self._error(f"cannot move corrupt blob {r.blob.digest} to {QUARANTINE_DIR}: {exc}")
            stats.errors += 1
            return ""
        self._reports[entry.path] = entry.report
        return entry.path

    # -- what is broken --------------------------------------------------------------------
    def _missing_manifests(self, blobs: list[Blob], findings: _Findings) -> None:
        """Linked manifests whose blob is not in the store (and not held by an interrupted
        garbage collection, which the next sweep puts back)."""
        gone = self._manifests - {b.digest for b in blobs}  # corrupt ones are reported as such
        if not gone:
            return
        held = set(Hold(self.storage).held_blobs())
        for digest in sorted(gone - held):
            try:
                self.storage.stat(store.blob_data(digest))
            except FileNotFoundError:
                findings.missing.add(digest)
            except OSError:
                pass  # the listing said why already

    def _open_entries(self, blobs: list[Blob], entries: list[Entry], findings: _Findings) -> None:
        """Blobs quarantined by earlier runs that no push has brought back yet."""
        present = {b.digest for b in blobs}
        for entry in entries:
            if entry.digest not in present and entry.digest not in findings.corrupt:
                findings.open_entries[entry.digest] = entry.path

    def _report(self, findings: _Findings, stats: VerifyStats) -> None:
        bad = (
            set(findings.corrupt)
            | findings.missing
            | findings.unreadable
            | set(findings.open_entries)
        )
        try:
            tags = self._tags_reaching(bad, set(findings.corrupt))
        except OSError as exc:
            self._error(f"cannot tell which tags are affected: {exc}")
            stats.errors += 1
            tags = {}
        broken: set[str] = set()

        def names(digest: str, verb: str = "it breaks") -> str:
            found = sorted(tags.get(digest, {}))
            if not found:
                return "no tag reaches it"
            more = f" and {len(found) - 20} more" if len(found) > 20 else ""
            return f"{verb} " + ", ".join(found[:20]) + more

        for digest, path in sorted(findings.corrupt.items()):
            affected = tags.get(digest, {})
            broken |= set(affected)
            where = f"moved to {path}" if path else "left in place (dry run)"
            if path:
                try:
                    tagged = {**self._reports.get(path, {}), "tags": dict(sorted(affected.items()))}
                    self.quarantine.write_report(path, tagged)
                except OSError as exc:
                    log.warning("cannot update %s: %s", path, exc)
            self.out.emit(
                "blob_corrupt",
                f"CORRUPT blob {digest}: its content does not match its digest; {where};"
                f" {names(digest)}"
                + ("; push those images again (or delete the tags)" if affected else ""),
                level=logging.ERROR,
                digest=digest,
                quarantine=path,
                tags=sorted(affected),
            )
        for digest, path in sorted(findings.open_entries.items()):
            affected = tags.get(digest, {})
            if not affected:
                continue  # nothing uses it any more: the entry is only kept for the operator
            broken |= set(affected)
            self.out.emit(
                "quarantine_open",
                f"blob {digest} ({path}) is still missing from the registry: {names(digest)};"
                " push those images again (or delete the tags)",
                level=logging.ERROR,
                digest=digest,
                quarantine=path,
                tags=sorted(affected),
            )
        for digest in sorted(findings.missing - set(findings.open_entries)):
            affected = tags.get(digest, {})
            broken |= set(affected)
            self.out.emit(
                "manifest_missing",
                f"manifest {digest} is linked in the registry but its blob is missing:"
                f" {names(digest)}; push those images again or delete the tags (garbage"
                " collection deletes nothing while a linked manifest cannot be read)",
                level=logging.ERROR,
                digest=digest,
                tags=sorted(affected),
            )
        for digest in sorted(findings.unreadable):
            affected = tags.get(digest, {})
            stats.manifests_unreadable.append(digest)
            self.out.emit(
                "manifest_unreadable",
                f"manifest {digest} is intact but not a manifest the janitor can read"
                f" ({names(digest, 'tagged as')}); garbage collection deletes"
                " nothing while it is linked: delete those tags",
                level=logging.ERROR,
                digest=digest,
                tags=sorted(affected),
            )
        stats.broken_tags = sorted(broken)

    def _tags_reaching(self, digests: set[str], corrupt: set[str]) -> dict[str, dict[str, str]]:
        """digest -> {"repo:tag": the tag's digest} for every tag whose image needs it."""
        repos = store.scan(Survey(self.storage), self.pool)
        reader = manifests.ManifestReader(self.storage, self.pool)
        for d in corrupt:  # still in place in a dry run: its content is not to be trusted
            reader.unusable(d, "corrupt")
        tagged = [t for r in repos for t in r.tags if t.digest is not None]
        manifests.closure({t.digest for t in tagged if t.digest}, reader)  # reads each once
        out: dict[str, dict[str, str]] = {}
        for t in tagged:
            assert t.digest is not None
            reach = manifests.closure({t.digest}, reader)
            for d in digests & (reach.reachable | reach.blobs):
                out.setdefault(d, {})[f"{t.repository}:{t.name}"] = t.digest
        return out

    def _error(self, text: str, **fields: object) -> None:
        self.out.emit("error", text, level=logging.ERROR, **fields)
