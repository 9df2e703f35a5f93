"""`registry-janitor report`: what is filling the store, per repository, and each tag's last
push and last pull.

Bytes come from the descriptors in the repository's manifests (every revision, as GC sees
them): `unique` counts blobs no other repository references, `shared` the rest. Reads each
distinct manifest once; never stats the blobs themselves. Pulls come from the pull record
(pulls.py) and what the registry's log holds beyond it; the report saves nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from registry_janitor import manifests, pulls, store
from registry_janitor.output import Output, human_bytes, iso
from registry_janitor.policy import Policy, Rule
from registry_janitor.records import Repository
from registry_janitor.registry_log import RegistryLog
from registry_janitor.storage import Storage
from registry_janitor.survey import Survey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepoUsage:
    repository: str
    tags: int
    manifests: int
    newest_push: float | None
    oldest_push: float | None
    unique_bytes: int
    shared_bytes: int


def usage(repos: Sequence[Repository], reader: manifests.ManifestReader) -> list[RepoUsage]:
    parsed = reader.read_many(d for r in repos for d in r.revisions)
    blobs_of: dict[str, dict[str, int]] = {}
    for r in repos:
        blobs: dict[str, int] = {}
        for digest in r.revisions:
            m = parsed.get(digest)
            if m is None:
                continue
            blobs[m.digest] = m.size
            for d, size in m.blobs:
                blobs[d] = max(size, 0)
        blobs_of[r.name] = blobs
    refs = Counter(d for blobs in blobs_of.values() for d in blobs)
    out = []
    for r in repos:
        blobs = blobs_of[r.name]
        pushes = [t.mtime for t in r.tags if t.digest is not None]
        out.append(
            RepoUsage(
                repository=r.name,
                tags=len(r.tags),
                manifests=len(r.revisions),
                newest_push=max(pushes) if pushes else None,
                oldest_push=min(pushes) if pushes else None,
                unique_bytes=sum(s for d, s in blobs.items() if refs[d] == 1),
                shared_bytes=sum(s for d, s in blobs.items() if refs[d] > 1),
            )
        )
    return out


@dataclass(frozen=True)
class TagUse:
    repository: str
    tag: str
    digest: str | None
    last_push: float
    last_pull: float | None  # None: no pull recorded


def tag_uses(
    repos: Sequence[Repository],
    feed: pulls.Feed,
    policy: Policy,
    reader: manifests.ManifestReader,
) -> list[TagUse]:
    """Each tag's last push and last pull as the policy counts pulls (HEAD or not), newest
    use first within a repository."""
    out = []
    for r in repos:
        count_head = policy.rule_for(r.name).count_head_as_pull
        last, _ = pulls.tag_pulls(r, feed.record, count_head=count_head, reader=reader)
        uses = [
            TagUse(r.name, t.name, t.digest, t.mtime, last.get(t.name))
            for t in r.tags
            if t.digest is not None
        ]
        uses.sort(key=lambda u: (-max(u.last_push, u.last_pull or 0.0), u.tag))
        out += uses
    return out


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return "unreadable manifest" if ts == float("inf") else iso(ts)


def run(
    storage: Storage,
    pool: Executor,
    out: Output,
    stream: TextIO,
    *,
    registry_log: Path | None = None,
    policy: Policy | None = None,
    journal: Path | None = None,
    pending_urls: Sequence[str] = (),
) -> None:
    survey = Survey(storage)
    repos = store.scan(survey, pool)
    for gap in survey.gaps:
        log.warning("report: %s", gap)
    log_reader = RegistryLog(registry_log, pulls=True) if registry_log is not None else None
    try:
        feed = pulls.read_feed(storage, log_reader, time.time(), journal, pending_urls)
    finally:
        if log_reader is not None:
            log_reader.close()
    reader = manifests.ManifestReader(storage, pool)
    try:
        rows = usage(repos, reader)
        uses = tag_uses(repos, feed, policy or Policy(default=Rule(keep_last_n=0)), reader)
    finally:
        reader.close()
    rows.sort(key=lambda u: (-u.unique_bytes, u.repository))
    since = feed.covered_since
    coverage = (
        f"the pull record holds every pull since {iso(since)}"
        if since is not None
        else f"the pull record is not current ({feed.gap})"
    )
    if out.as_json:
        out.emit("pull_record", coverage, covered_since=iso(since) if since else None)
        for t in uses:
            out.emit(
                "tag",
                f"{t.repository}:{t.tag}",
                repository=t.repository,
                tag=t.tag,
                digest=t.digest,
                last_push=iso(t.last_push),
                last_pull=_when(t.last_pull),
            )
        for u in rows:
            out.emit(
                "repository",
                u.repository,
                repository=u.repository,
                tags=u.tags,
                manifests=u.manifests,
                newest_push=iso(u.newest_push) if u.newest_push else None,
                oldest_push=iso(u.oldest_push) if u.oldest_push else None,
                unique_bytes=u.unique_bytes,
                shared_bytes=u.shared_bytes,
            )
        return
    _table(
        stream,
        ("REPOSITORY", "TAGS", "MANIFESTS", "NEWEST PUSH", "OLDEST PUSH", "UNIQUE", "SHARED"),
        [
            (
                u.repository,
                str(u.tags),
                str(u.manifests),
                iso(u.newest_push) if u.newest_push else "-",
                iso(u.oldest_push) if u.oldest_push else "-",
                human_bytes(u.unique_bytes),
                human_bytes(u.shared_bytes),
            )
            for u in rows
        ],
        right=True,
    )
    total = sum(u.unique_bytes for u in rows)
    stream.write(f"{len(rows)} repositories, {human_bytes(total)} used by one repository only\n")
    stream.write("\n")
    _table(
        stream,
        ("REPOSITORY", "TAG", "LAST PUSH", "LAST PULL"),
        [(t.repository, t.tag, iso(t.last_push), _when(t.last_pull) or "-") for t in uses],
    )
    stream.write(f"{len(uses)} tags; {coverage}\n")


def _table(
    stream: TextIO, header: tuple[str, ...], body: list[tuple[str, ...]], *, right: bool = False
) -> None:
    """Columns padded to their widest cell; `right`: all but the first aligned right."""
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            c.rjust(w) if right and i > 0 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        stream.write("  ".join(cells).rstrip() + "\n")
