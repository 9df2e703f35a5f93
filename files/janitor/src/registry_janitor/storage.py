"""The janitor's only access to the registry's storage: list, stat, read, write, move, delete.

Paths are `/`-separated and relative to the registry's root directory (the data directory,
or the `rootdirectory` prefix in a bucket), as the registry's own storage drivers name them:
`docker/registry/v2/blobs/sha256/ab/<hex>/data`. Retention, reachability and garbage
collection go through this interface and never touch `os` directly.

Two backends: `FilesystemStorage` (here) and `S3Storage` (s3.py, the registry's s3 driver's
layout in a bucket). They differ in two ways the callers ask about instead of guessing:
`renames` (a directory can be renamed in one atomic step; an object store has no rename, so
the callers delete in an order that keeps the registry consistent instead) and
`listing_is_cheap` (listing a whole subtree with sizes and mtimes costs one request per
1,000 files, cheaper than listing directories level by level and statting each file).

Errors are the built-in ones: `FileNotFoundError` when a path does not exist (the only error
that may mean "gone"), any other `OSError` when it cannot be read or changed.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from registry_janitor import atomic

V2 = "docker/registry/v2"
REPOSITORIES = f"{V2}/repositories"
BLOBS = f"{V2}/blobs/sha256"


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool  # a real directory: never a symlink to one
    is_link: bool = False  # a symbolic link (the registry's filesystem driver follows it)


@dataclass(frozen=True)
class Stat:
    size: int
    mtime: float
    is_dir: bool = False
    is_file: bool = True  # a regular file (not a symlink, device or directory)
    is_link: bool = False
    # What tells one version of the file from another: the mtime on a filesystem; on an
    # object store the object's own LastModified, which a janitor's copy does not carry over
    # (s3.py: `mtime` is then the copied-from mtime, `stamp` the copy's).
    stamp: float | None = None

    @property
    def version(self) -> float:
        return self.mtime if self.stamp is None else self.stamp


# What walk() returns: (path relative to the walked directory, its stat) per file.
Files = list[tuple[str, Stat]]


class Storage(Protocol):
    # move() renames a file or a directory tree in one atomic step (a filesystem). False:
    # move() copies, then deletes the source (an object store).
    renames: bool
    # walk() is one request per 1,000 files (an object store): cheaper than list() per
    # directory plus stat() per file. False: walk() lists and stats every directory and file.
    listing_is_cheap: bool

    def list(self, path: str) -> list[Entry]:
        """Entries of a directory; FileNotFoundError when it does not exist."""
        ...

    def stat(self, path: str) -> Stat:
        """The path itself, never what a symlink points at."""
        ...

    def read(self, path: str, limit: int) -> tuple[bytes, Stat]:
        """Up to `limit` bytes of a regular file, and its stat from the same handle.
        Not a regular file (a directory, a symlink): b"" and a stat with is_file False."""
        ...

    def read_chunks(
        self, path: str, chunk_size: int, *, fresh: bool = False
    ) -> Generator[bytes | memoryview, None, None]:
        """`fresh`: bypass what the client cached of the file (a second read that must not
        repeat the first one's pages). The whole content of a regular file, in pieces of at most `chunk_size` bytes, for
        content too large to hold at once (blobs). A generator: the file is opened on the
        first `next()` and closed at the end or when the generator is closed (use
        `contextlib.closing`). A piece may be reused for the next one: consume it at once.
        FileNotFoundError when it does not exist; another OSError when it is not a regular
        file or cannot be read."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Replace the file atomically (a reader sees the old or the new content)."""
        ...

    def move(self, src: str, dst: str) -> None:
        """Rename in one step. `dst` must not exist; its parent is created when missing."""
        ...

    def delete(self, path: str) -> None:
        """Remove a file or a whole directory tree; nothing when it does not exist."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove a directory only if it is empty (OSError otherwise). On an object store,
        where directories are only key prefixes, it removes nothing: it fails when anything
        is below the path, and succeeds when nothing is."""
        ...

    def walk(self, path: str) -> Files:
        """Every file below `path` (names relative to it, `/`-separated) with its stat; []
        when there is nothing. Symlinks are listed (is_file False), never followed."""
        ...

    def delete_many(self, paths: Sequence[str]) -> dict[str, OSError]:
        """Delete files (not directories); one already gone counts as deleted. Returns the
        ones that failed. On an object store: batches of 1,000 keys per request."""
        ...

    def close(self) -> None: ...


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW
_PARENT_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | _NOFOLLOW


class FilesystemStorage:
    """The registry's filesystem driver: a directory tree under `root`.

    Built for a slow network filesystem, where every path component can cost a round trip:
    the directories most paths go through (repositories, blobs, the janitor's own) are opened
    once and paths below them are resolved from those descriptors.

    Symlinks are never followed below the root, at any level: each component of an anchor
    (and of every other path outside the anchors) is opened with O_NOFOLLOW, so a planted link
    (`.registry-janitor-held` pointing elsewhere, say) cannot make the janitor read, move or
    delete outside the store; such a path fails with ELOOP. Only `root` itself may be a link
    (the operator's choice). Below an anchor, the last component of a path is never followed
    (lstat, O_NOFOLLOW, rename and unlink act on the link itself).
    """

    renames = True
    listing_is_cheap = False

    def __init__(self, root: Path, anchors: tuple[str, ...] = (REPOSITORIES, BLOBS)) -> None:
        self.root = root
        self._anchors = sorted(anchors, key=len, reverse=True)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FilesystemStorage({str(self.root)!r})"

    def _root_fd(self) -> int:
        with self._lock:
            fd = self._fds.get("")
            if fd is None:
                fd = self._fds[""] = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            return fd

    def _descend(self, path: str, *, create: bool = False) -> int:
        """A new descriptor of the directory `path` below the root, every component opened
        without following a link (ELOOP or ENOTDIR when one is a link). `create`: make the
        missing ones."""
        fd = os.dup(self._root_fd())
        try:
            for part in path.split("/") if path else ():
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # another thread made it meanwhile
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _anchor_fd(self, anchor: str) -> int | None:
        with self._lock:
            fd = self._fds.get(anchor)
        if fd is not None:
            return fd
        try:
            fd = self._descend(anchor)
        except FileNotFoundError:
            return None  # not there yet (a fresh store): resolved component by component
        with self._lock:
            if anchor in self._fds:  # another thread opened it meanwhile
                os.close(fd)
                return self._fds[anchor]
            self._fds[anchor] = fd
        return fd

    def _anchored(self, path: str) -> tuple[int, str] | None:
        """(anchor descriptor, path relative to it) for a path strictly below an open anchor."""
        for anchor in self._anchors:
            if path.startswith(anchor + "/"):
                fd = self._anchor_fd(anchor)
                return None if fd is None else (fd, path[len(anchor) + 1 :])
        return None

    @contextmanager
    def _at(self, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """(directory descriptor, path relative to it) for the duration of the block: the
        anchor's descriptor below an anchor; elsewhere (and with `create`, which makes missing
        parents) the parent directory, descended into without following links."""
        found = None if create else self._anchored(path)
        if found is not None:
            yield found
            return
        parent, _, name = path.rpartition("/")
        if not name:
            yield self._root_fd(), "."
            return
        fd = self._descend(parent, create=create)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def list(self, path: str) -> list[Entry]:
        with self._at(path) as (dir_fd, rel):
            fd = os.open(rel, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            with os.scandir(fd) as it:
                return [Entry(e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it]
        finally:
            os.close(fd)

    def stat(self, path: str) -> Stat:
        with self._at(path) as (dir_fd, rel):
            return _stat(os.lstat(rel, dir_fd=dir_fd))

    def read(self, path: str, limit: int) -> tuple[bytes, Stat]:
        try:
            with self._at(path) as (dir_fd, rel):
                fd = os.open(rel, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink where a file should be
                return b"", Stat(0, 0.0, is_dir=False, is_file=False, is_link=True)
            raise
        try:
            st = _stat(os.fstat(fd))
            if not st.is_file:
                return b"", st
            chunks = []
            left = limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks), st
        finally:
            os.close(fd)

    def read_chunks(
        self, path: str, chunk_size: int, *, fresh: bool = False
    ) -> Generator[bytes | memoryview, None, None]:
        with self._at(path) as (dir_fd, rel):
            fd = os.open(rel, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not _stat(st).is_file:
                raise OSError(errno.EINVAL, "not a regular file", path)
            if fresh and hasattr(os, "posix_fadvise"):
                # Drop the file's cached pages: the reads below reach the server (the cifs
                # client, too, reads from its server what is not in the page cache).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            # One buffer per file, read into without a copy; no larger than the file (plus
            # one byte to see its end in the same read), so small blobs cost small buffers.
            buf = bytearray(max(1, min(chunk_size, st.st_size + 1)))
            view = memoryview(buf)
            while True:
                n = os.readv(fd, [buf])
                if n == 0:
                    return
                yield view[:n]
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> None:
        with self._at(path, create=True) as (dir_fd, rel):
            atomic.write_at(dir_fd, rel, data)

    def move(self, src: str, dst: str) -> None:
        with self._at(src) as (src_fd, src_rel):
            try:
                with self._at(dst) as (dst_fd, dst_rel):
                    os.rename(src_rel, dst_rel, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except FileNotFoundError:
                # The source is gone, or the target's parent does not exist yet. Never decide
                # by whether the parent existed: another thread may have just created it.
                parent = dst.rpartition("/")[0]
                if not parent or not _exists(self, src):
                    raise
                with self._at(dst, create=True) as (dst_fd, dst_rel):
                    os.rename(src_rel, dst_rel, src_dir_fd=src_fd, dst_dir_fd=dst_fd)

    def _parent(self, path: str) -> tuple[int, str, bool]:
        """(descriptor of the parent directory, last component, owned). The parent is opened
        with O_NOFOLLOW: a parent swapped for a symlink is never followed. O_PATH: the
        descriptor only names the directory for the *at calls, so the filesystem is not asked
        to open it (one round trip less on a network filesystem)."""
        found = self._anchored(path)
        if found is None:
            parent, _, name = path.rpartition("/")
            return self._descend(parent), name, True
        dir_fd, rel = found
        parent, _, name = rel.rpartition("/")
        if not parent:
            return dir_fd, name, False
        return os.open(parent, _PARENT_FLAGS, dir_fd=dir_fd), name, True

    def delete(self, path: str) -> None:
        try:
            fd, name, owned = self._parent(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return  # nothing of ours below a symlink; the caller removes the link itself
            raise
        try:
            remove_tree(name, fd)
        finally:
            if owned:
                os.close(fd)

    def rmdir(self, path: str) -> None:
        fd, name, owned = self._parent(path)
        try:
            os.rmdir(name, dir_fd=fd)
        finally:
            if owned:
                os.close(fd)

    def walk(self, path: str) -> Files:
        out: Files = []
        try:
            with self._at(path) as (dir_fd, rel):
                fd = os.open(rel, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return out
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return out  # a symlink or a file: nothing below it
            raise
        _walk(fd, "", out)
        return out

    def delete_many(self, paths: Sequence[str]) -> dict[str, OSError]:
        failed: dict[str, OSError] = {}
        for path in paths:
            try:
                with self._at(path) as (dir_fd, rel):
                    os.unlink(rel, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed[path] = exc
        return failed


def _walk(fd: int, prefix: str, out: Files) -> None:
    """Files below the directory `fd` (closed here), each lstat'ed; never follows a link."""
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in entries:
            if is_dir:
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone, or swapped for something else meanwhile
                _walk(sub, f"{prefix}{name}/", out)
                continue
            try:
                out.append((prefix + name, _stat(os.lstat(name, dir_fd=fd))))
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


def _exists(storage: FilesystemStorage, path: str) -> bool:
    try:
        storage.stat(path)
    except FileNotFoundError:
        return False
    return True


def _stat(st: os.stat_result) -> Stat:
    import stat as s

    return Stat(
        st.st_size,
        st.st_mtime,
        s.S_ISDIR(st.st_mode),
        s.S_ISREG(st.st_mode),
        is_link=s.S_ISLNK(st.st_mode),
    )


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
