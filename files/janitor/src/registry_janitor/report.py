"""`registry-janitor report`: what is filling the store, per repository.

Bytes come from the descriptors in the repository's manifests (every revision, as GC sees
them): `unique` counts blobs no other repository references, `shared` the rest. Reads each
distinct manifest once; never stats the blobs themselves.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TextIO

from registry_janitor import manifests, store
from registry_janitor.output import Output, human_bytes, iso
from registry_janitor.records import Repository
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


def run(storage: Storage, pool: Executor, out: Output, stream: TextIO) -> None:
    survey = Survey(storage)
    repos = store.scan(survey, pool)
    for gap in survey.gaps:
        log.warning("report: %s", gap)
    reader = manifests.ManifestReader(storage, pool)
    try:
        rows = usage(repos, reader)
    finally:
        reader.close()
    rows.sort(key=lambda u: (-u.unique_bytes, u.repository))
    if out.as_json:
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
    header = ("REPOSITORY", "TAGS", "MANIFESTS", "NEWEST PUSH", "OLDEST PUSH", "UNIQUE", "SHARED")
    table = [header] + [
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
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        stream.write("  ".join(cells).rstrip() + "\n")
    total = sum(u.unique_bytes for u in rows)
    stream.write(f"{len(rows)} repositories, {human_bytes(total)} used by one repository only\n")
