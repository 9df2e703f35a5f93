"""The notification journal: envelopes the listener accepted, one JSON line each, on disk.

Writing (`append`, the listener): under an flock on `<journal>.lock`, the line is appended to
the file opened anew by its path, and fsynced before the listener answers 200; a registry
that got no answer sends the envelope again. A file starts with a header line naming when it
was started (and a random id), so no two journal files begin with the same bytes: the
janitor's `Position` (registry_log.py) tells them apart as it does the registry's log files.

Reading (`JournalReader`, the janitor): the same follower as the log, resuming at the offset
saved in the pull record, through a rotation to `<journal>.1`. It collects the manifest pulls
and watches each registry host's instance id: the registry queues notifications in memory
and a restart loses what was still queued, so a new instance id for a source addr means
notifications between the old instance's last event and the new one's first may be lost
(`cuts`: the record is complete again only from that first event on). A source addr seen for
the first time is treated the same way: nothing says what it lost before.

Rotation (`rotate`, the janitor, after the record with the journal's position is saved):
under the same lock, only when the record's position is the end of the file, the file is
renamed to `<journal>.1` and a new one started. No line the janitor has not merged is ever
renamed away or overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_janitor import notifications
from registry_janitor.registry_log import Position, RegistryLog, continues

log = logging.getLogger(__name__)

_HEADER = "registry-janitor notification journal"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# A journal this large, read to its end, is rotated by the janitor.
ROTATE_BYTES = 16 << 20


def append(path: Path, events: list[dict[str, Any]], received: float) -> None:
    """Appends one accepted envelope and fsyncs it; OSError when it is not on disk (then
    the file is as it was)."""
    line = json.dumps({"received": received, "events": events}, separators=(",", ":"))
    with _locked(path):
        fd = _open(path)
        try:
            size = os.fstat(fd).st_size
            try:
                _write(fd, line.encode() + b"\n")
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # no half line for the next one to join
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def start(path: Path) -> None:
    """Creates the journal (its header line) if there is none: an empty journal says that
    nothing arrived since the listener started, a missing one that nothing can be known."""
    with _locked(path):
        os.close(_open(path))


def rotate(path: Path, position: Position | None, min_bytes: int = ROTATE_BYTES) -> bool:
    """Renames the journal to `<journal>.1` and starts a new one, when `position` (saved in
    the pull record) is its end and it holds at least `min_bytes`. True when it did."""
    if position is None:
        return False
    with _locked(path):
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            if size < min_bytes or size != position.offset or not continues(fd, position):
                return False
        finally:
            os.close(fd)
        os.replace(path, rotated(path))
        os.close(_open(path))
    log.info("rotated the notification journal %s (%d bytes, all merged)", path, size)
    return True


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


@dataclass(frozen=True)
class InstanceGap:
    """Notifications of `addr` between `last` (its old instance's last event; None: never
    seen) and `first` (the new instance's first) may be lost."""

    addr: str
    last: float | None
    first: float

    def describe(self) -> str:
        if self.last is None:
            return f"first notification from the registry at {self.addr}"
        return (
            f"the registry at {self.addr} restarted: notifications between"
            f" {_iso(self.last)} and {_iso(self.first)} may be lost"
        )


class JournalReader(RegistryLog):
    """Follows the journal as RegistryLog follows the log, collecting pulls (`pulls`),
    the instance ids seen (`sources`: addr -> (instance id, last event time), updated in
    place) and where continuity ended (`gaps`, `unreadable_since`)."""

    def __init__(self, path: Path, sources: dict[str, tuple[str, float]]) -> None:
        super().__init__(path, pulls=True)
        self.sources = dict(sources)
        self.gaps: list[InstanceGap] = []
        # a line that could not be read: the record is complete again only from the next
        # line's time on (None: no such line; inf: none came after it)
        self.unreadable_since: float | None = None
        self.unreadable = 0

    def _parsed(self, lines: list[bytes], now: float) -> Iterator[dict[str, str]]:
        """Collects pulls and instance ids; yields nothing, as the journal names no blob
        touches for garbage collection's barrier (that is the log's)."""
        for raw in lines:
            self.lines += 1
            try:
                doc = json.loads(raw)
                if isinstance(doc, dict) and doc.get("journal") == _HEADER:
                    if self.first_time is None:
                        self.first_time = float(doc["started"])
                    continue
                received = float(doc["received"])
                events = [notifications.event(e) for e in doc["events"]]
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s: line %d is not a journal line (%s)", self.path, self.lines, exc)
                self.unreadable += 1
                self.unreadable_since = float("inf")
                continue
            if self.first_time is None:
                self.first_time = received
            if self.unreadable_since == float("inf"):
                self.unreadable_since = received
            for e in events:
                self._watch(e)
                found = notifications.pull(e)
                if found is not None:
                    self.pulls.append(found)
        return iter(())

    def _watch(self, e: notifications.Event) -> None:
        known = self.sources.get(e.addr)
        if known is None or known[0] != e.instance:
            self.gaps.append(InstanceGap(e.addr, None if known is None else known[1], e.when))
            self.sources[e.addr] = (e.instance, e.when)
        else:
            self.sources[e.addr] = (e.instance, max(known[1], e.when))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    """The journal for appending (under the lock), started with its header line if it is
    new or empty, and without the cut line a listener killed inside a write left."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        _drop_cut_line(fd)
        if os.fstat(fd).st_size == 0:
            header = {"journal": _HEADER, "started": time.time(), "id": uuid.uuid4().hex}
            _write(fd, json.dumps(header).encode() + b"\n")
            os.fsync(fd)
            _fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _drop_cut_line(fd: int, chunk: int = 1 << 16) -> None:
    """Truncates the file after its last newline. A line without one is what a listener
    killed inside a write (or a crash before fsync) left: never acknowledged, so the registry
    sends it again, and the next line must not be appended to it (the two would be one
    unreadable line, and the reader a gap)."""
    end = os.fstat(fd).st_size
    if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            keep = start + found + 1
            break
        pos = start
    else:
        keep = 0  # not even the header is whole: start the file again
    log.warning("dropped a cut line at the end of the notification journal (%d bytes)", end - keep)
    os.ftruncate(fd, keep)
    os.fsync(fd)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
