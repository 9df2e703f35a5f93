"""The pull record: when each tag and manifest was last pulled, kept on the share.

Fed from the registry's log (registry_log.py: a manifest GET or HEAD answered 200), from the
registry's notifications (journal.py: what `registry-janitor listen` accepted), or both. Each
run reads what was written since the last run stopped reading and saves, in one atomic
write through the storage (a kill leaves the old record or the new one, on a filesystem and
in a bucket alike), the pull times together with how far the log was read and since when the
record is continuous (`covered_since`).

A gap ends the continuity: the log was rotated past lines not read yet (the janitor did not
run for longer than the log keeps), cut, replaced, or it is a new file (a rebuilt janitor
host). The record then holds every pull only from the first line of the log as it is now.
A log that cannot be read, or none configured, leaves this run without any continuity: it
keeps every tag a pull might keep (retention.Pulls with covered_since None). Pull times
recorded before a gap stay: they were real pulls, and only ever keep more.

The notification journal has one more kind of gap: a registry restart (a new instance id for
a source addr) loses the notifications it still had queued; the record is then complete only
from the new instance's first event on. With both sources configured, every gap of either
counts: the record starts at the later of the two.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from registry_janitor import manifests, notifications, retention
from registry_janitor.journal import JournalReader
from registry_janitor.records import Repository
from registry_janitor.registry_log import Position, Pull, RegistryLog
from registry_janitor.storage import Storage

log = logging.getLogger(__name__)

# In the data directory (the bucket's root directory), beside the janitor's other state.
PULLS_FILE = ".registry-janitor.pulls"
_VERSION = 1
# A line logged just before a cut may carry a time after the first line kept (the registry
# stamps a line before it writes it): the record starts this much later than that line.
_CUT_SLACK = 1.0

# repository -> reference (tag or digest) -> (last GET, last HEAD); 0.0: never
Times = dict[str, dict[str, tuple[float, float]]]


@dataclass
class Record:
    pulls: Times = field(default_factory=dict)
    covered_since: float | None = None
    position: Position | None = None
    read_at: float | None = None
    journal: Position | None = None  # how far the notification journal was read
    sources: dict[str, tuple[str, float]] = field(default_factory=dict)  # journal.JournalReader


@dataclass
class Feed:
    """What this run knows: the record (updated with the log) and whether it is current."""

    record: Record
    current: bool  # the log was read to its end now; False: pulls since are unknown
    gap: str = ""  # why the continuity ended or is unknown ("" when it did not)
    read: list[Pull] = field(default_factory=list)  # the pulls read in this run
    # notifications the registries still held for the listener when the journal was to be
    # read (pending_urls); None: not asked, or a registry did not answer
    undelivered: int | None = None

    @property
    def covered_since(self) -> float | None:
        return self.record.covered_since if self.current else None


def load(storage: Storage) -> tuple[Record, str]:
    """The record, and "" or why it could not be used (then an empty one)."""
    try:
        raw, _ = storage.read(PULLS_FILE, 256 << 20)
    except FileNotFoundError:
        return Record(), "no pull record yet"
    except OSError as exc:
        return Record(), f"cannot read {PULLS_FILE}: {exc.strerror or exc}"
    try:
        return _parse(json.loads(raw)), ""
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return Record(), f"{PULLS_FILE} is not a pull record ({exc})"


def _parse(doc: object) -> Record:
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        raise ValueError("unknown version")
    position, journal = (_position(doc.get(k)) for k in ("position", "journal"))
    times: Times = {
        str(repo): {str(ref): (float(t[0]), float(t[1])) for ref, t in refs.items()}
        for repo, refs in doc["pulls"].items()
    }
    since = doc.get("covered_since")
    read_at = doc.get("read_at")
    sources = {
        str(addr): (str(s["instance"]), float(s["last"]))
        for addr, s in (doc.get("sources") or {}).items()
    }
    return Record(
        times,
        float(since) if since is not None else None,
        position,
        float(read_at) if read_at is not None else None,
        journal,
        sources,
    )


def _position(pos: object) -> Position | None:
    if not isinstance(pos, dict):
        return None
    return Position(int(pos["offset"]), str(pos["head"]), int(pos["head_length"]))


def _position_doc(pos: Position | None) -> dict[str, object] | None:
    if pos is None:
        return None
    return {"offset": pos.offset, "head": pos.head, "head_length": pos.head_length}


def save(storage: Storage, record: Record) -> None:
    doc = {
        "version": _VERSION,
        "covered_since": record.covered_since,
        "read_at": record.read_at,
        "position": _position_doc(record.position),
        "journal": _position_doc(record.journal),
        "sources": {a: {"instance": i, "last": t} for a, (i, t) in record.sources.items()},
        "pulls": {
            repo: {ref: list(t) for ref, t in refs.items()} for repo, refs in record.pulls.items()
        },
    }
    storage.write(PULLS_FILE, json.dumps(doc, separators=(",", ":")).encode())


def read_feed(
    storage: Storage,
    registry_log: RegistryLog | None,
    now: float,
    journal_path: Path | None = None,
    pending_urls: Sequence[str] = (),
) -> Feed:
    """The record brought up to date with the log and the notification journal at
    `journal_path` (not saved: `save`). `pending_urls`: each registry's `/debug/vars`; a
    notification any of them has not delivered yet makes this run not current."""
    record, problem = load(storage)
    if problem and not problem.startswith("no pull record"):
        # A record that cannot be read is not overwritten on a guess: this run keeps what a
        # pull might keep, and the next one tries again.
        return Feed(record, current=False, gap=problem)
    if registry_log is None and journal_path is None:
        return Feed(
            record,
            current=False,
            gap="no registry log (JANITOR_REGISTRY_LOG) or notification journal"
            " (JANITOR_NOTIFICATIONS_JOURNAL) configured",
        )
    undelivered: int | None = None
    if journal_path is not None and pending_urls:
        undelivered, held = _undelivered(pending_urls)
        if held:
            # Read next run: pulls still queued in a registry would be missing.
            return Feed(record, current=False, gap=held, undelivered=undelivered)
    journal = JournalReader(journal_path, record.sources) if journal_path else None
    try:
        feed = _read(record, problem, registry_log, journal, now)
        feed.undelivered = undelivered
        return feed
    finally:
        if journal is not None:
            journal.close()


def _read(
    record: Record,
    problem: str,
    registry_log: RegistryLog | None,
    journal: JournalReader | None,
    now: float,
) -> Feed:
    starts: list[float] = []  # from when on each gap leaves the record complete again
    gaps: list[str] = []
    positions: list[Position | None] = []
    for source, since, what in (
        (registry_log, record.position, "the registry's log"),
        (journal, record.journal, "the notification journal"),
    ):
        if source is None:
            positions.append(since)
            continue
        try:
            continuous = source.read_since(since)
            positions.append(source.position())
        except OSError as exc:
            return Feed(
                record,
                current=False,
                gap=f"cannot read {what} {source.path}: {exc.strerror or exc}",
            )
        if not continuous:
            first = source.first_time
            starts.append(now if first is None else first + _CUT_SLACK)
            gaps.append(
                problem
                or (f"{what} is read for the first time" if since is None else "")
                or f"{what} was rotated or replaced past lines not read yet"
            )
    if journal is not None:
        starts += [g.first + _CUT_SLACK for g in journal.gaps]
        gaps += [g.describe() for g in journal.gaps]
        if journal.unreadable_since is not None:
            starts.append(journal.unreadable_since)
            gaps.append(f"{journal.unreadable} line(s) of the notification journal unreadable")
        record.sources = journal.sources
    if starts or record.covered_since is None:
        record.covered_since = min(now, max([*starts, record.covered_since or 0.0]))
        if not gaps:
            gaps.append(problem or "the pull record starts now")
    record.position, record.journal = positions
    # With both sources, one pull is in each: the journal's list counts it once.
    read = journal.pulls if journal is not None else registry_log.pulls if registry_log else []
    for source in (registry_log, journal):
        if source is not None:
            merge(record, source.pulls)
    record.read_at = now
    return Feed(record, current=True, gap="; ".join(dict.fromkeys(gaps)), read=list(read))


def _undelivered(urls: Sequence[str]) -> tuple[int | None, str]:
    """How many notifications the registries at `urls` still hold (None: one did not
    answer), and "" when that is none (checked before the journal is read), else why the
    journal cannot be complete now."""
    total, why = 0, []
    for url in urls:
        try:
            count = notifications.undelivered(url)
        except (OSError, ValueError) as exc:
            return (
                None,
                f"cannot tell whether the registry at {url} delivered its notifications: {exc}",
            )
        total += count
        if count:
            why.append(f"the registry at {url} has {count} notification(s) not delivered yet")
    return total, "; ".join(why)


def merge(record: Record, found: Iterable[Pull]) -> None:
    for p in found:
        refs = record.pulls.setdefault(p.repository, {})
        get, head = refs.get(p.reference, (0.0, 0.0))
        refs[p.reference] = (get, max(head, p.when)) if p.head else (max(get, p.when), head)


def forget(record: Record, repos: Sequence[Repository], before: float) -> None:
    """Drop what names no repository, tag or manifest of the store any more (read at
    `before`); a reference pulled since may be a push the scan did not see yet."""
    live = {r.name: {t.name for t in r.tags} | set(r.revisions) for r in repos}
    for repo in list(record.pulls):
        refs = record.pulls[repo]
        for ref in list(refs):
            if ref not in live.get(repo, ()) and max(refs[ref]) < before:
                del refs[ref]
        if not refs:
            del record.pulls[repo]


def counts_by_repository(found: Iterable[Pull]) -> dict[str, dict[str, int]]:
    """repository -> method (GET, HEAD) -> pulls."""
    out: dict[str, dict[str, int]] = {}
    for p in found:
        methods = out.setdefault(p.repository, {})
        method = "HEAD" if p.head else "GET"
        methods[method] = methods.get(method, 0) + 1
    return out


def tag_pulls(
    repo: Repository,
    record: Record,
    *,
    count_head: bool,
    reader: manifests.ManifestReader,
) -> tuple[dict[str, float], list[str]]:
    """tag name -> its last pull: by its name, or by the digest of a manifest it reaches (an
    index's child); and the manifests that could not be read (their tags count as pulled
    at +inf: kept)."""
    refs = record.pulls.get(repo.name, {})
    when = {ref: max(t[0], t[1] if count_head else 0.0) for ref, t in refs.items()}
    by_digest = {d: t for d, t in when.items() if d.startswith("sha256:") and t > 0}
    out: dict[str, float] = {}
    unreadable: set[str] = set()
    if by_digest:  # one concurrent walk; each tag's closure below comes from the cache
        manifests.closure(frozenset(t.digest for t in repo.tags if t.digest), reader)
    for tag in repo.tags:
        last = when.get(tag.name, 0.0)
        if by_digest and tag.digest is not None:
            reach = manifests.closure(frozenset({tag.digest}), reader)
            if not reach.complete:
                unreadable |= reach.unreadable
                last = float("inf")
            else:
                last = max([last, *(by_digest.get(d, 0.0) for d in reach.reachable)])
        if last > 0:
            out[tag.name] = last
    return out, sorted(unreadable)


def for_plan(
    feed: Feed | None, repo: Repository, count_head: bool, reader: manifests.ManifestReader
) -> tuple[retention.Pulls, list[str]]:
    if feed is None:
        return retention.Pulls(), []
    last, unreadable = tag_pulls(repo, feed.record, count_head=count_head, reader=reader)
    return retention.Pulls(last, feed.covered_since), unreadable
