"""Applies deletions to the store, each one crash-safe from the registry's point of view.

- Tag: `current/link` is unlinked first, so the tag stops resolving in one step; the rest of
  the tag directory goes after. A crash in between leaves a tag directory without a link,
  which the registry cannot serve and the next sweep removes as a leftover.
- Revision: its `link` file first (the registry then reports the manifest unknown in this
  repository), then the directory.
- Repository: only the registry's own `_manifests`/`_layers` and an empty `_uploads`, then the
  directory and its parents while they are empty, so a nested repository below survives.
"""

from __future__ import annotations

import errno
import os
import shutil
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


def delete_tag(repo: Repository, tag: str) -> None:
    path = tag_dir(repo, tag)
    _unlink_in(path / "current", "link")
    _rmtree_quiet(path)


def remove_leftover_tag(repo: Repository, tag: str) -> None:
    _rmtree_quiet(tag_dir(repo, tag))


def unlink_revision(repo: Repository, digest: str) -> None:
    path = revision_dir(repo, digest)
    _unlink_in(path, "link")
    _rmtree_quiet(path)


def remove_repository(repo: Repository, repositories_dir: Path) -> bool:
    """Remove an empty repository. True when its directory itself is gone."""
    for name in ("_manifests", "_layers"):
        _rmtree_quiet(repo.path / name)
    try:
        os.rmdir(repo.path / "_uploads")  # only when empty: never an upload in progress
    except OSError:
        pass
    gone = False
    path = repo.path
    while path != repositories_dir and repositories_dir in path.parents:
        try:
            os.rmdir(path)  # fails unless empty: nested repositories keep their parents
        except FileNotFoundError:
            pass
        except OSError:
            break
        gone = gone or path == repo.path
        path = path.parent
    return gone
