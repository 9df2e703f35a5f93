"""Applies deletions to the store, each one crash-safe from the registry's point of view.

- Tag and revision: the directory is first renamed into the janitor's trash directory (in the
  data directory, outside `docker/`), one atomic step after which the registry sees neither
  the tag in `tags/list` nor the manifest; then the trash copy is deleted. A crash in between
  leaves only trash, which the next sweep empties. Where a rename is impossible, the `link`
  file goes first (the tag or manifest stops resolving in one step), then the directory; a
  tag directory left without a link is removed later as a leftover.
- Repository: only the registry's own `_layers`, then `_manifests` (each renamed into the trash
  in one step) and an empty `_uploads`, then the directory and its parents while they are
  empty, so a nested repository below survives.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from registry_janitor.store import Repository


def _unlink_in(directory: Path, name: str) -> None:
    """Unlink `directory/name` unless `directory` is a symlink (then rmtree drops the link).

    Opening the directory with O_NOFOLLOW first means a planted symlink can never make the
    janitor delete a file outside the store.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return
        raise
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _rmtree_quiet(path: Path) -> None:
    # shutil.rmtree removes symlinks found inside instead of following them.
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def tag_dir(repo: Repository, tag: str) -> Path:
    return repo.path / "_manifests" / "tags" / tag


def revision_dir(repo: Repository, digest: str) -> Path:
    return repo.path / "_manifests" / "revisions" / "sha256" / digest.removeprefix("sha256:")


def _to_trash(path: Path, trash: Path | None) -> bool:
    """Atomically move `path` out of the registry's view. False if it cannot be renamed."""
    if trash is None:
        return False
    target = trash / uuid.uuid4().hex
    try:
        os.rename(path, target)  # does not follow a symlink at `path`: it moves the link
    except FileNotFoundError:
        return True  # already gone
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT):
            return False
        raise
    _remove(target)
    return True


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def remove_tree(name: str, dir_fd: int | None = None) -> None:
    """Delete `name` (relative to `dir_fd`) and all below it; a symlink is unlinked, never
    followed. What shutil.rmtree does, in fewer operations (no lstat + fstat per directory):
    each directory is opened with O_NOFOLLOW, so a directory swapped for a symlink mid-way is
    unlinked as a link, and entries are removed relative to their directory's descriptor.
    """
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:  # a symlink or a file
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        return
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for entry, is_dir in entries:
            if is_dir:
                remove_tree(entry, fd)
                continue
            try:
                os.unlink(entry, dir_fd=fd)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _remove(path: Path) -> None:
    remove_tree(str(path))


def empty_trash(trash: Path) -> int:
    """Delete what an interrupted sweep left in the trash; returns the number of entries."""
    try:
        entries = list(trash.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        _remove(entry)
    return len(entries)


def _changed(link: Path, seen: float | None) -> bool:
    """The link was rewritten (a push) since the scan saw it with mtime `seen`."""
    if seen is None:
        return False
    try:
        return os.lstat(link).st_mtime != seen
    except FileNotFoundError:
        return False


def delete_tag(
    repo: Repository, tag: str, trash: Path | None = None, pushed: float | None = None
) -> bool:
    """False, and nothing done, when the tag was pushed again after the scan (`pushed`)."""
    path = tag_dir(repo, tag)
    # Narrows the race with a CI job re-pushing this tag from the whole sweep to one stat.
    if _changed(path / "current" / "link", pushed):
        return False
    if not _to_trash(path, trash):
        _unlink_in(path / "current", "link")
        _rmtree_quiet(path)
    return True


def remove_leftover_tag(repo: Repository, tag: str) -> None:
    _rmtree_quiet(tag_dir(repo, tag))


def unlink_revision(
    repo: Repository, digest: str, trash: Path | None = None, written: float | None = None
) -> bool:
    """False, and nothing done, when the manifest was pushed again after the scan."""
    path = revision_dir(repo, digest)
    if _changed(path / "link", written):
        return False
    if not _to_trash(path, trash):
        _unlink_in(path, "link")
        _rmtree_quiet(path)
    return True


def remove_repository(repo: Repository, repositories_dir: Path, trash: Path | None = None) -> None:
    """Remove an empty repository; its directory stays while a nested repository lives in it."""
    # `_layers` first and whole (one rename into the trash): the registry's catalog lists
    # every directory holding `_layers`, and the janitor finds repositories by `_manifests`.
    # A crash between the two then leaves an untouched `_manifests` that the next sweep sees
    # and finishes removing, never a half-emptied `_layers` that looks freshly pushed to.
    for name in ("_layers", "_manifests"):
        if not _to_trash(repo.path / name, trash):
            _rmtree_quiet(repo.path / name)
    try:
        os.rmdir(repo.path / "_uploads")  # only when empty: never an upload in progress
    except OSError:
        pass
    path = repo.path
    while path != repositories_dir and repositories_dir in path.parents:
        try:
            os.rmdir(path)  # fails unless empty: nested repositories keep their parents
        except FileNotFoundError:
            pass
        except OSError:
            break
        path = path.parent
