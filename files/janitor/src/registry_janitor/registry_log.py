"""What clients asked the registry for, read from its log file: which blobs they touched.

Garbage collection cannot see a client that HEADs an old unreferenced blob (200), skips its
upload and then PUTs a manifest naming it. The registry *says* so: `App.ServeHTTP` logs every
request ("response completed", info level, with method, URI and status; errors as "response
completed with error" with `err.detail` naming the digest) to stderr, and it writes that line
**before** the client gets its response. So a log file the registry appends to is a barrier:
read to its end right before a blob is held, and every HEAD a client has already seen an
answer to is in it.

Touches: a blob HEAD or GET answered 200 or 307 (`/v2/<name>/blobs/sha256:<hex>`), a
cross-repository mount (`?mount=sha256:<hex>`), an upload committed with `?digest=sha256:<hex>`,
and any error naming a digest (a manifest PUT refused with "blob unknown" names the blob it
wanted). Both of the registry's log formatters are read (text, json).

The log is an aid, never a reason to delete: a log that cannot be read, that was rotated past
lines not read yet, or that is not configured, makes the janitor fall back to what it does
without one (grace, hold, settle, re-check). It only ever keeps or puts back blobs.

Pulls: a manifest GET or HEAD answered 200 (`/v2/<name>/manifests/<tag or digest>`) is a
pull of that reference (`pull`); pulls.py keeps them on the share, resuming each run where the
last one stopped reading (`Position`, `RegistryLog.read_since`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

_DIGEST = r"sha256:[0-9a-f]{64}"
_BLOB_URI = re.compile(rf"/v2/.+/blobs/({_DIGEST})(?:[?#]|$)")
_MOUNT = re.compile(rf"[?&]mount=({_DIGEST})")
_UPLOAD_DIGEST = re.compile(rf"/blobs/uploads/.*[?&]digest=({_DIGEST})")
_ANY_DIGEST = re.compile(_DIGEST)
_MANIFEST_URI = re.compile(r"/v2/(.+)/manifests/([^/?#]+)(?:[?#]|$)")
# logrus text formatter: key=value or key="quoted value"
_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)')
# Bytes read per call; a line longer than this is still read whole (the remainder waits).
_READ = 1 << 20


def _fields(line: str) -> dict[str, str]:
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
    out = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        out[key] = value
    return out


def _when(text: str, default: float) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return default


def touches(line: str, now: float) -> list[tuple[str, float]]:
    """(digest, when) for every blob a log line says a client touched."""
    return _touches(_fields(line), now)


@dataclass(frozen=True)
class Pull:
    """A manifest a client was served: by tag or by digest, with GET or HEAD."""

    repository: str
    reference: str  # a tag, or "sha256:<hex>"
    head: bool
    when: float


def pull(line: str, now: float) -> Pull | None:
    """The pull a log line records, if it records one."""
    return _pull(_fields(line), now)


def _pull(f: dict[str, str], now: float) -> Pull | None:
    method = f.get("http.request.method", "")
    if f.get("http.response.status") != "200" or method not in ("GET", "HEAD"):
        return None
    m = _MANIFEST_URI.search(f.get("http.request.uri", ""))
    if m is None:
        return None
    return Pull(m.group(1), m.group(2), method == "HEAD", _when(f.get("time", ""), now))


def _touches(f: dict[str, str], now: float) -> list[tuple[str, float]]:
    uri = f.get("http.request.uri", "")
    if not uri and "err.detail" not in f:
        return []
    when = _when(f.get("time", ""), now)
    status = f.get("http.response.status", "")
    method = f.get("http.request.method", "")
    found: list[str] = []
    if status in ("200", "307") and method in ("HEAD", "GET"):
        m = _BLOB_URI.search(uri)
        if m:
            found.append(m.group(1))
    if status in ("201", "202"):
        for pattern in (_MOUNT, _UPLOAD_DIGEST):
            m = pattern.search(uri)
            if m:
                found.append(m.group(1))
    if f.get("level") == "error" or "err.code" in f:
        found += _ANY_DIGEST.findall(f.get("err.detail", ""))
    return [(d, when) for d in found]


# Bytes at the start of a log file that tell it from the file the same path held before a
# rotation: its first lines, whose times and request ids no later file repeats.
_HEAD = 512


@dataclass(frozen=True)
class Position:
    """How far a log file was read: the file (a hash of its first bytes: a copytruncate keeps
    the inode, a copy changes it) and the offset of the first line not read."""

    offset: int
    head: str  # sha256 hex of the file's first `head_length` bytes
    head_length: int


class RegistryLog:
    """Follows one log file from where the last read ended (thread-safe).

    `pulls`: collect the manifest pulls of what is read into `self.pulls`."""

    def __init__(self, path: Path, *, pulls: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self.lines = 0
        self._collect_pulls = pulls
        self.pulls: list[Pull] = []
        self.first_time: float | None = None  # of the first line read since the last reopen

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def read_all(self) -> dict[str, float] | None:
        """Touches in the whole file as it is now (the start of a run), digest -> latest
        time; None when the file cannot be read."""
        with self._lock:
            try:
                self._reopen()
                return self._read_to_end()
            except OSError as exc:
                log.warning("cannot read the registry's log %s: %s", self.path, exc)
                return None

    def follow(self) -> tuple[dict[str, float], bool]:
        """Touches in what the registry wrote since the last read, and whether that is all
        of it: False when the file is gone or unreadable, or was cut shorter than what was
        read (lines written before the cut are lost). A file renamed away (rotation) is read
        to its end through the descriptor still open on it, then the new one from its start."""
        with self._lock:
            if self._fd is None:
                return {}, False
            try:
                found = self._read_to_end()
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) != self._ino:
                    self._reopen()
                    found.update(self._read_to_end())
                elif st.st_size < self._offset:
                    log.warning("the registry's log %s was truncated", self.path)
                    self._reopen()
                    found.update(self._read_to_end())
                    return found, False
                return found, True
            except OSError as exc:
                log.warning("cannot read the registry's log %s: %s", self.path, exc)
                return {}, False

    def read_since(self, position: Position | None) -> bool:
        """Reads (collecting pulls) everything written since `position`; True when that is
        every line: the file is the one the position names (same inode and first bytes, at
        least as long), or that file was rotated to `<path>.1` (logrotate's copytruncate
        with delaycompress) and is read there to its end, then the new file from its start.
        False (a gap) otherwise, or without a position: the current file is read from its
        start, and `first_time` says from when on it holds every line. OSError when the log
        cannot be read at all."""
        with self._lock:
            if position is not None:
                for rotated in (False, True):
                    path = self.path.with_name(self.path.name + ".1") if rotated else self.path
                    try:
                        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
                    except FileNotFoundError:
                        continue
                    if not continues(fd, position):
                        os.close(fd)
                        continue
                    self._use(fd, position.offset)
                    self._read_to_end()
                    if rotated:
                        self._reopen()
                        self._read_to_end()
                    return True
            self._reopen()
            self._read_to_end()
            return False

    def position(self) -> Position | None:
        """Where the last read stopped (before a line not yet complete); None for an empty
        file, whose first bytes could not tell it from the next one."""
        with self._lock:
            if self._fd is None:
                return None
            head = os.pread(self._fd, _HEAD, 0)
            if not head:
                return None
            return Position(
                self._offset - len(self._partial),
                hashlib.sha256(head).hexdigest(),
                len(head),
            )

    def _reopen(self) -> None:
        self._use(os.open(self.path, os.O_RDONLY | _NOFOLLOW), 0)

    def _use(self, fd: int, offset: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        st = os.fstat(fd)
        self._fd, self._ino, self._offset, self._partial = fd, (st.st_dev, st.st_ino), offset, b""
        self.first_time = None

    def _read_to_end(self) -> dict[str, float]:
        assert self._fd is not None
        now = time.time()
        found: dict[str, float] = {}
        while True:
            chunk = os.pread(self._fd, _READ, self._offset)
            if not chunk:
                return found
            self._offset += len(chunk)
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for line in self._parsed(complete, now):
                for digest, when in _touches(line, now):
                    found[digest] = max(when, found.get(digest, 0.0))

    def _parsed(self, lines: list[bytes], now: float) -> Iterator[dict[str, str]]:
        """The fields of each line that names a blob (most lines name none: pings, PATCH);
        pulls, and the first line's time, collected on the way."""
        for raw in lines:
            self.lines += 1
            if self.first_time is None and self._collect_pulls:
                self.first_time = _when(
                    _fields(raw.decode("utf-8", "replace")).get("time", ""), now
                )
            manifest = self._collect_pulls and b"/manifests/" in raw
            if not manifest and b"sha256:" not in raw:
                continue
            f = _fields(raw.decode("utf-8", "replace"))
            if manifest:
                found = _pull(f, now)
                if found is not None:
                    self.pulls.append(found)
            yield f


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def continues(fd: int, position: Position) -> bool:
    """Whether the open file is the one `position` was read in, grown or not."""
    st = os.fstat(fd)
    if st.st_size < position.offset:
        return False
    head = os.pread(fd, position.head_length, 0)
    return len(head) == position.head_length and hashlib.sha256(head).hexdigest() == position.head
