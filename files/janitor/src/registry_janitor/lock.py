"""One janitor run at a time: an exclusive flock on a lock file.

A second `sweep`, `prune` or `gc` is refused at once (the next timer run comes soon). `verify`
takes the same lock (it moves corrupt blobs out of the registry's tree) but must not cost a
sweep its run: the holder writes its command into the lock file, and when either side of a
clash is a `verify`, the newcomer waits for the lock (up to WAIT seconds) instead of failing.
A verify run is bounded by its budget, so a sweep waits minutes at most.

A lock held elsewhere fails `flock(LOCK_NB)` with EWOULDBLOCK on local filesystems; the
kernel's cifs client (the Storage Box mount) says EACCES instead (measured in molecule/vm).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

# How long a run waits for the lock when a `verify` is involved.
WAIT = 3600.0
_POLL = 0.2
# What flock(LOCK_EX | LOCK_NB) fails with when another process holds the lock.
_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


class LockHeld(Exception):
    def __init__(self, path: Path, holder: str = "") -> None:
        who = "a verify run" if holder == "verify" else "another sweep"
        super().__init__(f"{who} holds the lock {path}")
        self.path = path
        self.holder = holder


class SweepLock:
    """`with SweepLock(path):` raises LockHeld at once if another process holds it.

    flock is released by the kernel when the process dies, so a crash leaves no stale lock.
    """

    def __init__(
        self,
        path: Path,
        command: str = "sweep",
        *,
        stop: threading.Event | None = None,
        on_wait: Callable[[str], None] | None = None,
        wait: float = WAIT,
    ) -> None:
        self.path = path
        self.command = command
        self.stop = stop
        self.on_wait = on_wait
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> Self:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._acquire(fd)
            # Who holds it, for a process that finds it taken.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.command} {os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _acquire(self, fd: int) -> None:
        deadline: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in _HELD:
                    raise
                holder = os.pread(fd, 64, 0).decode(errors="replace").partition(" ")[0]
                if "verify" not in (holder, self.command) or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    raise LockHeld(self.path, holder) from None
                if self.stop is not None and self.stop.is_set():
                    raise LockHeld(self.path, holder) from None
            if deadline is None:
                deadline = time.monotonic() + self.wait
                if self.on_wait is not None:
                    self.on_wait(holder or "another run")
            time.sleep(_POLL)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
