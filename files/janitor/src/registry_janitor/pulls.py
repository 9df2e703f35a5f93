"""The pull record: when each tag and manifest was last pulled, kept on the share.

Fed from the registry's log (registry_log.py: a manifest GET or HEAD answered 200). Each run
reads what the registry wrote since the last run stopped reading and saves, in one atomic
write through the storage (a kill leaves the old record or the new one, on a filesystem and
in a bucket alike), the pull times together with how far the log was read and since when the
record is continuous (`covered_since`).

A gap ends the continuity: the log was rotated past lines not read yet (the janitor did not
run for longer than the log keeps), cut, replaced, or it is a new file (a rebuilt janitor
host). The record then holds every pull only from the first line of the log as it is now.
A log that cannot be read, or none configured, leaves this run without any continuity: it
keeps every tag a pull might keep (retention.Pulls with covered_since None). Pull times
recorded before a gap stay: they were real pulls, and only ever keep more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from registry_janitor import manifests, retention
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


@dataclass
class Feed:
    """What this run knows: the record (updated with the log) and whether it is current."""

    record: Record
    current: bool  # the log was read to its end now; False: pulls since are unknown
    gap: str = ""  # why the continuity ended or is unknown ("" when it did not)
    read: list[Pull] = field(default_factory=list)  # the pulls read in this run

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
    pos = doc.get("position")
    position = (
        Position(int(pos["offset"]), str(pos["head"]), int(pos["head_length"]))
        if isinstance(pos, dict)
        else None
    )
    times: Times = {
        str(repo): {str(ref): (float(t[0]), float(t[1])) for ref, t in refs.items()}
        for repo, refs in doc["pulls"].items()
    }
    since = doc.get("covered_since")
    read_at = doc.get("read_at")
    return Record(
        times,
        float(since) if since is not None else None,
        position,
        float(read_at) if read_at is not None else None,
    )


def save(storage: Storage, record: Record) -> None:
    pos = record.position
    doc = {
        "version": _VERSION,
        "covered_since": record.covered_since,
        "read_at": record.read_at,
        "position": None
        if pos is None
        else {"offset": pos.offset, "head": pos.head, "head_length": pos.head_length},
        "pulls": {
            repo: {ref: list(t) for ref, t in refs.items()} for repo, refs in record.pulls.items()
        },
    }
    storage.write(PULLS_FILE, json.dumps(doc, separators=(",", ":")).encode())


def read_feed(storage: Storage, registry_log: RegistryLog | None, now: float) -> Feed:
    """The record brought up to date with the log (not saved: `save`)."""
    record, problem = load(storage)
    if problem and not problem.startswith("no pull record"):
        # A record that cannot be read is not overwritten on a guess: this run keeps what a
        # pull might keep, and the next one tries again.
        return Feed(record, current=False, gap=problem)
    if registry_log is None:
        return Feed(record, current=False, gap="no registry log configured (JANITOR_REGISTRY_LOG)")
    try:
        continuous = registry_log.read_since(record.position)
        position = registry_log.position()
    except OSError as exc:
        return Feed(
            record,
            current=False,
            gap=f"cannot read the registry's log {registry_log.path}: {exc.strerror or exc}",
        )
    gap = ""
    if not continuous or record.covered_since is None:
        first = registry_log.first_time
        record.covered_since = now if first is None else min(now, first + _CUT_SLACK)
        gap = (
            problem
            if problem
            else "the registry's log was rotated or replaced past lines not read yet"
        )
    merge(record, registry_log.pulls)
    record.position = position
    record.read_at = now
    return Feed(record, current=True, gap=gap, read=list(registry_log.pulls))


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
