"""Reads the registry's filesystem layout into plain records.

Built for a slow network filesystem (every stat is a round trip): each tag's `current/link`
is opened once (fstat + read on the same handle), directories are listed with scandir, and
independent reads run concurrently on a bounded thread pool. Symlinks are never followed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_LINK_MAX = 256  # a link holds "sha256:<64 hex>"; anything longer is not a link
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = os.O_RDONLY | _NOFOLLOW

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Tag:
    repository: str
    name: str
    digest: str | None  # from current/link; None: the link is missing or not a digest
    mtime: float  # current/link mtime = last push; the tag directory's mtime without a link


@dataclass(frozen=True)
class Repository:
    name: str
    path: Path
    tags: tuple[Tag, ...] = ()
    revisions: frozenset[str] = frozenset()  # "sha256:<hex>" of _manifests/revisions
    uploads: int = 0  # entries in _uploads (uploads in progress)
    # Non-`_` subdirectories exist: a nested repository (or the path to one) lives below.
    has_nested: bool = False
    # Something could not be read (other than "gone"): never delete anything here.
    errors: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.errors


@dataclass
class _Dir:
    path: Path
    name: str  # repository name relative to the repositories root ("" for the root)
    children: list[str] = field(default_factory=list)
    registry_dirs: set[str] = field(default_factory=set)
    error: str | None = None


def blob_path(blobs_dir: Path, digest: str) -> Path:
    hexpart = digest.removeprefix("sha256:")
    return blobs_dir / "sha256" / hexpart[:2] / hexpart / "data"


def pmap(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """map() on the pool when there is one (ordered results)."""
    return pool.map(fn, items) if pool is not None else map(fn, items)


# Items one pool task handles in a row: a future per item costs more CPU than a stat or a
# small read on a local disk (hundreds of thousands on a large store).
BATCH = 64


def pmap_batched(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """pmap() with items grouped into batches. At least 16 batches per thread, so on a slow
    filesystem no thread is left alone with a long batch at the end of a phase."""
    todo = list(items)
    if pool is None:
        return map(fn, todo)
    workers = getattr(pool, "_max_workers", 10)
    size = max(1, min(BATCH, len(todo) // (16 * workers)))
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    return (r for batch in pool.map(lambda b: [fn(x) for x in b], batches) for r in batch)


def _entries(path: Path, *, follow: bool = False) -> list[tuple[str, bool]]:
    """(name, is a directory and not a symlink) for each entry of `path`.

    Lists an open directory descriptor: when the filesystem reports no entry types, is_dir()
    falls back to fstatat(fd, name), one lookup, instead of a stat of the full path, a lookup
    per path component on a network filesystem. O_NOFOLLOW: a symlink is never listed as if
    it were the registry's directory (`follow` only for the store root the user configured).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else _NOFOLLOW))
    try:
        with os.scandir(fd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(fd)


def _list_dir(d: _Dir) -> _Dir:
    try:
        # Only real directories count: a symlinked directory is not descended into, so links
        # (and link loops) cannot take the walk outside the store.
        for name, is_dir in _entries(d.path, follow=not d.name):
            if not is_dir:
                continue
            if name.startswith("_"):
                d.registry_dirs.add(name)
            else:
                d.children.append(name)
    except FileNotFoundError:
        pass  # removed while we walked (e.g. by a concurrent janitor or GC)
    except OSError as exc:
        d.error = f"cannot list {d.path}: {exc.strerror or exc}"
    return d


def _list_names(path: Path, *, dirs_only: bool = True) -> tuple[list[str], str | None]:
    try:
        entries = _entries(path)
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        return [], f"cannot list {path}: {exc.strerror or exc}"
    return sorted(name for name, is_dir in entries if is_dir or not dirs_only), None


def read_link(path: Path | str, dir_fd: int | None = None) -> tuple[str | None, float | None]:
    """One open: (digest or None, mtime). (None, None) when the link does not exist."""
    try:
        fd = os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink where a link file should be
            return None, None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, st.st_mtime
        text = os.read(fd, _LINK_MAX).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return (text if DIGEST.fullmatch(text) else None), st.st_mtime


def discover(repositories_dir: Path, pool: Executor | None = None) -> list[_Dir]:
    """Every directory holding `_manifests` (a repository), nested names included.

    Walks breadth first, one level at a time, listing a whole level concurrently.
    """
    found: list[_Dir] = []
    level = [_Dir(repositories_dir, "")]
    while level:
        listed = list(pmap(pool, _list_dir, level))
        nxt: list[_Dir] = []
        for d in listed:
            if d.error and not d.name:
                # The root itself: a lost mount must fail the sweep, not look like an empty store.
                raise OSError(d.error)
            if d.error:
                log.warning("%s; repositories below it are skipped this time", d.error)
            if d.name and "_manifests" in d.registry_dirs:
                found.append(d)
            for child in sorted(d.children):
                name = f"{d.name}/{child}" if d.name else child
                nxt.append(_Dir(d.path / child, name))
        level = nxt
    return found


def _tag_record(repo: str, name: str, root_fd: int) -> tuple[Tag | None, str | None]:
    # Paths are relative to an open repositories directory: on a network filesystem every
    # path component can cost a lookup, and this skips the `docker/registry/v2/...` prefix.
    tag_dir = f"{repo}/_manifests/tags/{name}"
    try:
        digest, mtime = read_link(f"{tag_dir}/current/link", dir_fd=root_fd)
        if mtime is None:  # no link: age of the tag directory decides if it is a leftover
            mtime = os.lstat(tag_dir, dir_fd=root_fd).st_mtime
    except FileNotFoundError:
        return None, None  # the tag vanished while we looked
    except OSError as exc:
        return None, f"cannot read tag {name}: {exc.strerror or exc}"
    return Tag(repo, name, digest, mtime), None


def lstat_mtime(path: str, dir_fd: int | None = None) -> float | None:
    """mtime of `path` (not following a symlink), None when it cannot be stat'ed.

    With `dir_fd` the path is resolved from an open directory: fewer lookups on a network
    filesystem than a path from the store root.
    """
    try:
        return os.lstat(path, dir_fd=dir_fd).st_mtime
    except OSError:
        return None


def _read_repository(d: _Dir) -> tuple[Repository, list[str]]:
    """The repository record without its tags, and the names of its tags."""
    errors = [d.error] if d.error else []
    manifests = d.path / "_manifests"
    tag_names, err = _list_names(manifests / "tags")
    errors += [err] if err else []
    rev_names, err = _list_names(manifests / "revisions" / "sha256")
    errors += [err] if err else []
    uploads: list[str] = []
    if "_uploads" in d.registry_dirs:
        uploads, err = _list_names(d.path / "_uploads", dirs_only=False)
        errors += [err] if err else []
    repo = Repository(
        name=d.name,
        path=d.path,
        revisions=frozenset(f"sha256:{h}" for h in rev_names if _HEX.fullmatch(h)),
        uploads=len(uploads),
        has_nested=bool(d.children),
        errors=tuple(errors),
    )
    return repo, tag_names


def scan(repositories_dir: Path, pool: Executor | None = None) -> list[Repository]:
    """All repositories with their tags and revisions, sorted by name."""
    read = list(pmap(pool, _read_repository, discover(repositories_dir, pool)))
    tags: dict[str, list[Tag]] = {}
    errors: dict[str, list[str]] = {}
    if read:
        root_fd = os.open(repositories_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            jobs = [(r.name, name) for r, names in read for name in names]
            records = pmap_batched(pool, lambda job: _tag_record(*job, root_fd), jobs)
            for (name, _), (tag, err) in zip(jobs, records, strict=True):
                if tag is not None:
                    tags.setdefault(name, []).append(tag)
                if err is not None:
                    errors.setdefault(name, []).append(err)
        finally:
            os.close(root_fd)
    out = []
    for repo, _ in read:
        extra = tuple(errors.get(repo.name, ()))
        for e in repo.errors + extra:
            log.warning("%s: %s; leaving this repository untouched", repo.name, e)
        out.append(replace(repo, tags=tuple(tags.get(repo.name, ())), errors=repo.errors + extra))
    return sorted(out, key=lambda r: r.name)
