"""Reads the registry's layout into plain records, through the storage interface.

Built for a slow network filesystem (every operation is a round trip): each tag's
`current/link` is read once (content and mtime from one handle), directories are listed once,
and independent reads run concurrently on a bounded thread pool.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from registry_janitor.records import Repository, Tag
from registry_janitor.storage import BLOBS, REPOSITORIES, Storage
from registry_janitor.survey import Incomplete, Survey

log = logging.getLogger(__name__)

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
HEX = re.compile(r"[0-9a-f]{64}")
_LINK_MAX = 256  # a link holds "sha256:<64 hex>"; anything longer is not a link

T = TypeVar("T")
R = TypeVar("R")


def pmap(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """map() on the pool when there is one (ordered results)."""
    return pool.map(fn, items) if pool is not None else map(fn, items)


# Items one pool task handles in a row: a future per item costs more CPU than a stat or a
# small read on a local disk (hundreds of thousands on a large store).
BATCH = 64


# Batches per phase at least: 16 for each of the most threads the janitor runs, so on a slow
# filesystem no thread is left alone with a long batch at the end of a phase.
MIN_BATCHES = 16 * 10


def pmap_batched(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """pmap() with items grouped into batches (see BATCH and MIN_BATCHES)."""
    todo = list(items)
    if pool is None:
        return map(fn, todo)
    size = max(1, min(BATCH, len(todo) // MIN_BATCHES))
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    return (r for batch in pool.map(lambda b: [fn(x) for x in b], batches) for r in batch)


def blob_dir(digest: str) -> str:
    """The directory of a blob (holding its `data`) in the storage."""
    hexpart = digest.removeprefix("sha256:")
    return f"{BLOBS}/{hexpart[:2]}/{hexpart}"


def blob_data(digest: str) -> str:
    return f"{blob_dir(digest)}/data"


def read_link(storage: Storage, path: str) -> tuple[str | None, float | None]:
    """(digest or None, mtime); (None, None) when the link does not exist."""
    try:
        raw, st = storage.read(path, _LINK_MAX)
    except FileNotFoundError:
        return None, None
    if not st.is_file:
        return None, st.mtime or None
    text = raw.decode("ascii", "replace").strip()
    return (text if DIGEST.fullmatch(text) else None), st.mtime


@dataclass
class _Dir:
    name: str  # repository name relative to the repositories root ("" for the root)
    children: list[str] = field(default_factory=list)
    registry_dirs: set[str] = field(default_factory=set)

    @property
    def path(self) -> str:
        return f"{REPOSITORIES}/{self.name}" if self.name else REPOSITORIES


_LINK = (
    "a symbolic link: the registry's filesystem driver follows it, the janitor does not; put"
    " the directory itself there (or remove the link)"
)


def _list_dir(survey: Survey, d: _Dir) -> _Dir:
    before = len(survey.gaps)
    entries = survey.list(d.path)
    gone = entries is None and len(survey.gaps) == before
    if gone and not d.name and survey.stat(BLOBS) is not None:
        # No repositories at all, yet blobs: something moved them (a half-restored copy?).
        survey.gap(d.path, "missing while the store has blobs")
    for e in entries or ():
        if e.is_link:
            # Below it the registry serves repositories the janitor cannot see: their
            # manifests would look unreferenced. (A link named `_x` is the registry's own.)
            survey.gap(f"{d.path}/{e.name}", _LINK)
        elif not e.is_dir:
            continue  # a file: the registry's catalog ignores it too
        elif e.name.startswith("_"):
            d.registry_dirs.add(e.name)
        else:
            d.children.append(e.name)
    return d


def list_names(storage: Storage, path: str, *, dirs_only: bool = True) -> list[str]:
    """Sorted entry names; [] when the directory does not exist. Other errors raise."""
    try:
        entries = storage.list(path)
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir or not dirs_only)


def _dir_names(survey: Survey, path: str, repo: str, *, hexnames: bool = False) -> list[str]:
    """Sorted names of the directories in `path` ([] when it does not exist). A symbolic link
    there, or (`hexnames`) a directory whose name is not a sha256 hex digest, is a gap: the
    registry may serve what is behind it."""
    names = []
    for e in survey.list(path, repo) or ():
        if e.is_link:
            survey.gap(f"{path}/{e.name}", _LINK, repo)
        elif e.is_dir and hexnames and not HEX.fullmatch(e.name):
            survey.gap(f"{path}/{e.name}", "not a sha256 digest the janitor understands", repo)
        elif e.is_dir:
            names.append(e.name)
    return sorted(names)


def discover(survey: Survey, pool: Executor | None = None) -> list[_Dir]:
    """Every directory holding `_manifests` or `_layers` (a repository: the registry's
    catalog lists the latter), nested names included. A directory that cannot be listed,
    or a link, is a gap of the whole store: repositories below it are unknown.

    Walks breadth first, one level at a time, listing a whole level concurrently.
    """
    found: list[_Dir] = []
    level = [_Dir("")]
    while level:
        listed = list(pmap(pool, lambda d: _list_dir(survey, d), level))
        nxt: list[_Dir] = []
        for d in listed:
            if d.name and d.registry_dirs & {"_manifests", "_layers"}:
                found.append(d)
            for child in sorted(d.children):
                nxt.append(_Dir(f"{d.name}/{child}" if d.name else child))
        level = nxt
    return found


def _tag_record(survey: Survey, repo: str, name: str) -> Tag | None:
    tag_dir = f"{REPOSITORIES}/{repo}/_manifests/tags/{name}"
    link = f"{tag_dir}/current/link"
    found = survey.read(link, _LINK_MAX, repo)
    if found is None:  # no link (or unreadable: a gap): the tag directory's age decides
        st = survey.stat(tag_dir, repo)
        return None if st is None else Tag(repo, name, None, st.mtime)
    raw, st = found
    if not st.is_file:
        survey.gap(link, "not a regular file (the registry would follow a link)", repo)
        return None
    text = raw.decode("ascii", "replace").strip()
    return Tag(repo, name, text if DIGEST.fullmatch(text) else None, st.mtime)


def revisions_of(storage: Storage, repo: str) -> frozenset[str]:
    """The revision digests linked in a repository now (raises on errors other than gone)."""
    names = list_names(storage, f"{REPOSITORIES}/{repo}/_manifests/revisions/sha256")
    return frozenset(f"sha256:{h}" for h in names if HEX.fullmatch(h))


def _revisions(survey: Survey, d: _Dir) -> frozenset[str]:
    path = f"{d.path}/_manifests/revisions/sha256"
    return frozenset(f"sha256:{h}" for h in _dir_names(survey, path, d.name, hexnames=True))


def _read_repository(survey: Survey, d: _Dir) -> tuple[Repository, list[str]]:
    """The repository record without its tags, and the names of its tags."""
    has_manifests = "_manifests" in d.registry_dirs
    tag_names: list[str] = []
    revisions: frozenset[str] = frozenset()
    if has_manifests:
        tag_names = _dir_names(survey, f"{d.path}/_manifests/tags", d.name)
        revisions = _revisions(survey, d)
    uploads = 0
    if "_uploads" in d.registry_dirs:
        uploads = len(survey.list(f"{d.path}/_uploads", d.name) or ())
    repo = Repository(
        name=d.name, revisions=revisions, uploads=uploads, has_manifests=has_manifests
    )
    return repo, tag_names


def scan(survey: Survey, pool: Executor | None = None) -> list[Repository]:
    """All repositories with their tags and revisions, sorted by name. What could not be
    read is in the survey; a repository with gaps of its own has them as `errors` (prune
    leaves it untouched)."""
    found = discover(survey, pool)
    lost = [g for g in survey.gaps if g.path == REPOSITORIES]
    if lost:
        # A lost mount must fail the run, never look like an empty store.
        raise Incomplete(lost)
    read = list(pmap(pool, lambda d: _read_repository(survey, d), found))
    tags: dict[str, list[Tag]] = {}
    jobs = [(r.name, name) for r, names in read for name in names]
    records = pmap_batched(pool, lambda job: _tag_record(survey, *job), jobs)
    for (name, _), tag in zip(jobs, records, strict=True):
        if tag is not None:
            tags.setdefault(name, []).append(tag)
    errors: dict[str, list[str]] = {}
    for gap in survey.gaps:
        if gap.repository is not None:
            errors.setdefault(gap.repository, []).append(str(gap))
    out = []
    for repo, _ in read:
        errs = tuple(errors.get(repo.name, ()))
        for e in errs:
            log.warning("%s: %s; leaving this repository untouched", repo.name, e)
        out.append(replace(repo, tags=tuple(tags.get(repo.name, ())), errors=errs))
    return sorted(out, key=lambda r: r.name)


def reread(
    survey: Survey, names: Iterable[str], pool: Executor | None = None
) -> dict[str, tuple[list[Tag], frozenset[str]]]:
    """repository -> (its tags, its revisions) as they are now: what prune re-reads right
    before it unlinks revisions, so a push since the scan keeps what it reaches."""
    dirs = [_Dir(n, registry_dirs={"_manifests"}) for n in names]
    read = list(pmap(pool, lambda d: _read_repository(survey, d), dirs))
    jobs = [(r.name, name) for r, names in read for name in names]
    records = pmap_batched(pool, lambda job: _tag_record(survey, *job), jobs)
    tags: dict[str, list[Tag]] = {}
    for (name, _), tag in zip(jobs, records, strict=True):
        if tag is not None:
            tags.setdefault(name, []).append(tag)
    return {r.name: (tags.get(r.name, []), r.revisions) for r, _ in read}


def linked_revisions(survey: Survey, pool: Executor | None = None) -> dict[str, frozenset[str]]:
    """repository -> revisions linked now: what garbage collection re-reads after it held
    its candidates. What could not be read is in the survey (the caller seals it)."""
    dirs = [d for d in discover(survey, pool) if "_manifests" in d.registry_dirs]
    return dict(
        zip((d.name for d in dirs), pmap(pool, lambda d: _revisions(survey, d), dirs), strict=True)
    )
