"""Applies prune operations to the store, each one crash-safe from the registry's view.

- Tag, revision, leftover tag directory: first a re-check that it is still what the plan saw
  (a CI job may have pushed meanwhile), then the directory is renamed into the janitor's trash
  (in the data directory, outside `docker/`): one atomic step after which the registry sees
  neither the tag in `tags/list` nor the manifest. The trash copy is deleted afterwards; what
  cannot be deleted yet (SMB deletes a file only when its last handle closes) stays in the
  trash for the next run. Where a rename is impossible, the `link` file goes first (the tag or
  manifest stops resolving in one step), then the directory. An object store has no rename
  at all: there the link goes first, then the objects listed below the directory just before
  (s3.py says why each step leaves the registry consistent).
- Repository: re-listed right before; its `_layers` is *held* (see hold.py) so a push landing
  meanwhile gets its layer links back, then `_manifests` is removed directory by directory
  with rmdir, which fails on anything a push wrote meanwhile, then an empty `_uploads`, then
  the directory and its parents while they are empty (a nested repository below survives).

Every function returns True when it did its work, False when it found the item changed since
the scan and left it; any error other than "gone" raises.
"""

from __future__ import annotations

import errno
import logging
import uuid

from registry_janitor.hold import Hold
from registry_janitor.records import Repository
from registry_janitor.storage import REPOSITORIES, Storage
from registry_janitor.store import list_names, read_link

log = logging.getLogger(__name__)

# In the data directory, outside the registry's `docker/`: deletions pass through it.
TRASH_DIR = ".registry-janitor-trash"

# A rename is impossible here (another filesystem, or a filesystem that cannot rename
# directories): fall back to deleting in place, link first.
_NO_RENAME = (errno.EXDEV, errno.ENOTSUP, errno.EPERM, errno.EACCES)


def tag_dir(repo: Repository, tag: str) -> str:
    return f"{repo.path}/_manifests/tags/{tag}"


def revision_dir(repo: Repository, digest: str) -> str:
    return f"{repo.path}/_manifests/revisions/sha256/{digest.removeprefix('sha256:')}"


def _mtime(storage: Storage, path: str) -> float | None:
    """None only when the path is gone; any other error raises (a guard must not fail open)."""
    try:
        return storage.stat(path).mtime
    except FileNotFoundError:
        return None


def _changed(storage: Storage, link: str, seen: float | None) -> bool:
    """The link was rewritten (a push) since the scan saw it with mtime `seen`."""
    if seen is None:
        return False
    now = _mtime(storage, link)
    return now is not None and now != seen


def to_trash(storage: Storage, path: str, link: str | None = None) -> bool:
    """Take `path` out of the registry's view in one rename, then delete it. False when it
    was already gone."""
    if not storage.renames:
        return delete_in_order(storage, path, link)
    target = f"{TRASH_DIR}/{uuid.uuid4().hex}"
    try:
        storage.move(path, target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_RENAME:
            raise
        if link is not None:
            storage.delete(link)
        storage.delete(path)
        return True
    empty_entry(storage, target)
    return True


def delete_in_order(storage: Storage, path: str, link: str | None) -> bool:
    """Without rename: `link` first (the tag or manifest stops resolving in one step), then
    every other file below `path` as listed before the first delete, in batches. Files
    written below `path` after that listing stay. False when nothing was there."""
    files = [f"{path}/{name}" for name, _ in storage.walk(path)]
    if not files:
        return False
    if link is not None and link in files:
        failed = storage.delete_many([link])
        if failed:
            raise failed[link]
        files.remove(link)
    failed = storage.delete_many(files)
    if failed:
        raise next(iter(failed.values()))
    return True


def empty_entry(storage: Storage, path: str) -> bool:
    """Delete a trash entry; False (and it stays for the next run) when it cannot be yet.

    Its rename already took it out of the registry's view, so this is only disk space: on
    SMB a directory is not empty while a delete of a file in it is pending (the server
    removes a file when its last handle closes), which a later run finishes.
    """
    try:
        storage.delete(path)
    except OSError as exc:
        log.debug("trash entry %s stays for the next run: %s", path, exc)
        return False
    return True


def empty_trash(storage: Storage) -> tuple[int, int]:
    """Delete what earlier runs left in the trash: (entries deleted, entries left)."""
    done = left = 0
    for name in list_names(storage, TRASH_DIR, dirs_only=False):
        if empty_entry(storage, f"{TRASH_DIR}/{name}"):
            done += 1
        else:
            left += 1
    return done, left


def delete_tag(storage: Storage, repo: Repository, tag: str, pushed: float | None = None) -> bool:
    """False, and nothing done, when the tag was pushed again after the scan (`pushed`)."""
    path = tag_dir(repo, tag)
    # Narrows the race with a CI job re-pushing this tag from the whole sweep to one stat.
    if _changed(storage, f"{path}/current/link", pushed):
        return False
    to_trash(storage, path, f"{path}/current/link")
    return True


def remove_leftover_tag(storage: Storage, repo: Repository, tag: str) -> bool:
    """A tag directory without a usable current/link; False if a push gave it one since."""
    path = tag_dir(repo, tag)
    digest, _ = read_link(storage, f"{path}/current/link")
    if digest is not None:
        return False
    to_trash(storage, path)
    return True


def unlink_revision(
    storage: Storage, repo: Repository, digest: str, written: float | None = None
) -> bool:
    """False, and nothing done, when the manifest was pushed again after the scan."""
    path = revision_dir(repo, digest)
    if _changed(storage, f"{path}/link", written):
        return False
    to_trash(storage, path, f"{path}/link")
    return True


def _still_empty(storage: Storage, repo: Repository) -> bool:
    base = repo.path
    return not (
        list_names(storage, f"{base}/_manifests/tags")
        or list_names(storage, f"{base}/_manifests/revisions/sha256")
        or list_names(storage, f"{base}/_uploads", dirs_only=False)
    )


def _rmdir(storage: Storage, path: str) -> bool:
    """rmdir; True if gone afterwards. Not empty: False (a push wrote into it meanwhile)."""
    try:
        storage.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def remove_repository(storage: Storage, repo: Repository, hold: Hold) -> bool:
    """Remove an empty repository (its directory stays while a nested repository lives in
    it). False, with nothing lost, when a push reached it since the scan."""
    if not _still_empty(storage, repo):
        return False
    # `_layers` first, held (one rename): the registry's catalog lists every directory
    # holding `_layers`, and a manifest push needs the links in it, so a push from now on is
    # refused cleanly ("blob unknown") instead of landing in a repository being removed.
    held = hold.hold_layers(repo.name)
    base = f"{repo.path}/_manifests"
    for path in (f"{base}/revisions/sha256", f"{base}/revisions", f"{base}/tags", base):
        if not _rmdir(storage, path):
            if held:
                hold.restore_layers(repo.name)
            return False
    _rmdir(storage, f"{repo.path}/_uploads")  # only when empty: never an upload in progress
    path = repo.name
    while path:
        try:
            storage.rmdir(f"{REPOSITORIES}/{path}")  # fails unless empty: nested ones stay
        except FileNotFoundError:
            pass
        except OSError:
            break
        path = path.rpartition("/")[0]
    return True
