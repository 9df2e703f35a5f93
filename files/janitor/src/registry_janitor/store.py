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
    error: str | None = None

    @property
    def path(self) -> str:
        return f"{REPOSITORIES}/{self.name}" if self.name else REPOSITORIES


def _list_dir(storage: Storage, d: _Dir) -> _Dir:
    try:
        # Only real directories count: a symlinked directory is not descended into, so links
        # (and link loops) cannot take the walk outside the store.
        for e in storage.list(d.path):
            if not e.is_dir:
                continue
            if e.name.startswith("_"):
                d.registry_dirs.add(e.name)
            else:
                d.children.append(e.name)
    except FileNotFoundError:
        pass  # removed while we walked (e.g. by a concurrent janitor), or no store yet
    except OSError as exc:
        d.error = f"cannot list {d.path}: {exc.strerror or exc}"
    return d


def list_names(storage: Storage, path: str, *, dirs_only: bool = True) -> list[str]:
    """Sorted entry names; [] when the directory does not exist. Other errors raise."""
    try:
        entries = storage.list(path)
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir or not dirs_only)


def _names(storage: Storage, path: str, *, dirs_only: bool = True) -> tuple[list[str], str | None]:
    try:
        return list_names(storage, path, dirs_only=dirs_only), None
    except OSError as exc:
        return [], f"cannot list {path}: {exc.strerror or exc}"


def discover(storage: Storage, pool: Executor | None = None) -> list[_Dir]:
    """Every directory holding `_manifests` or `_layers` (a repository: the registry's
    catalog lists the latter), nested names included.

    Walks breadth first, one level at a time, listing a whole level concurrently.
    """
    found: list[_Dir] = []
    level = [_Dir("")]
    while level:
        listed = list(pmap(pool, lambda d: _list_dir(storage, d), level))
        nxt: list[_Dir] = []
        for d in listed:
            if d.error and not d.name:
                # The root itself: a lost mount must fail the sweep, not look like an empty store.
                raise OSError(d.error)
            if d.error:
                log.warning("%s; repositories below it are skipped this time", d.error)
            if d.name and d.registry_dirs & {"_manifests", "_layers"}:
                found.append(d)
            for child in sorted(d.children):
                nxt.append(_Dir(f"{d.name}/{child}" if d.name else child))
        level = nxt
    return found


def _tag_record(storage: Storage, repo: str, name: str) -> tuple[Tag | None, str | None]:
    tag_dir = f"{REPOSITORIES}/{repo}/_manifests/tags/{name}"
    try:
        digest, mtime = read_link(storage, f"{tag_dir}/current/link")
        if mtime is None:  # no link: age of the tag directory decides if it is a leftover
            mtime = storage.stat(tag_dir).mtime
    except FileNotFoundError:
        return None, None  # the tag vanished while we looked
    except OSError as exc:
        return None, f"cannot read tag {name}: {exc.strerror or exc}"
    return Tag(repo, name, digest, mtime), None


def revisions_of(storage: Storage, repo: str) -> frozenset[str]:
    """The revision digests linked in a repository now (raises on errors other than gone)."""
    names = list_names(storage, f"{REPOSITORIES}/{repo}/_manifests/revisions/sha256")
    return frozenset(f"sha256:{h}" for h in names if HEX.fullmatch(h))


def _read_repository(storage: Storage, d: _Dir) -> tuple[Repository, list[str]]:
    """The repository record without its tags, and the names of its tags."""
    errors = [d.error] if d.error else []
    has_manifests = "_manifests" in d.registry_dirs
    tag_names: list[str] = []
    rev_names: list[str] = []
    if has_manifests:
        tag_names, err = _names(storage, f"{d.path}/_manifests/tags")
        errors += [err] if err else []
        rev_names, err = _names(storage, f"{d.path}/_manifests/revisions/sha256")
        errors += [err] if err else []
    uploads: list[str] = []
    if "_uploads" in d.registry_dirs:
        uploads, err = _names(storage, f"{d.path}/_uploads", dirs_only=False)
        errors += [err] if err else []
    repo = Repository(
        name=d.name,
        revisions=frozenset(f"sha256:{h}" for h in rev_names if HEX.fullmatch(h)),
        uploads=len(uploads),
        has_manifests=has_manifests,
        errors=tuple(errors),
    )
    return repo, tag_names


def scan(storage: Storage, pool: Executor | None = None) -> list[Repository]:
    """All repositories with their tags and revisions, sorted by name."""
    read = list(pmap(pool, lambda d: _read_repository(storage, d), discover(storage, pool)))
    tags: dict[str, list[Tag]] = {}
    errors: dict[str, list[str]] = {}
    jobs = [(r.name, name) for r, names in read for name in names]
    records = pmap_batched(pool, lambda job: _tag_record(storage, *job), jobs)
    for (name, _), (tag, err) in zip(jobs, records, strict=True):
        if tag is not None:
            tags.setdefault(name, []).append(tag)
        if err is not None:
            errors.setdefault(name, []).append(err)
    out = []
    for repo, _ in read:
        extra = tuple(errors.get(repo.name, ()))
        for e in repo.errors + extra:
            log.warning("%s: %s; leaving this repository untouched", repo.name, e)
        out.append(replace(repo, tags=tuple(tags.get(repo.name, ())), errors=repo.errors + extra))
    return sorted(out, key=lambda r: r.name)


def linked_revisions(storage: Storage, pool: Executor | None = None) -> dict[str, frozenset[str]]:
    """repository -> revisions linked now: what garbage collection re-reads after it held
    its candidates. Raises when any repository cannot be listed (the caller must then keep
    every held blob)."""
    dirs = discover(storage, pool)
    failed = [d.error for d in dirs if d.error]
    if failed:
        raise OSError(failed[0])
    names = [d.name for d in dirs if "_manifests" in d.registry_dirs]
    return dict(zip(names, pmap(pool, lambda n: revisions_of(storage, n), names), strict=True))
