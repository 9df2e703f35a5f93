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
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

_DIGEST = r"sha256:[0-9a-f]{64}"
_BLOB_URI = re.compile(rf"/v2/.+/blobs/({_DIGEST})(?:[?#]|$)")
_MOUNT = re.compile(rf"[?&]mount=({_DIGEST})")
_UPLOAD_DIGEST = re.compile(rf"/blobs/uploads/.*[?&]digest=({_DIGEST})")
_ANY_DIGEST = re.compile(_DIGEST)
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
    f = _fields(line)
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


class RegistryLog:
    """Follows one log file from where the last read ended (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self.lines = 0

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

    def _reopen(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        st = os.fstat(fd)
        self._fd, self._ino, self._offset, self._partial = fd, (st.st_dev, st.st_ino), 0, b""

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
            for raw in complete:
                self.lines += 1
                if b"sha256:" not in raw:
                    continue  # names no blob (most lines: pings, manifests by tag, PATCH)
                for digest, when in touches(raw.decode("utf-8", "replace"), now):
                    found[digest] = max(when, found.get(digest, 0.0))
