"""A read-only FUSE passthrough that adds a fixed latency to every operation.

It models a network filesystem (a Storage Box over SMB): every lookup, stat, directory
open, listing, file open and read is one round trip. The kernel is told not to cache
anything (``attr_timeout=0,entry_timeout=0,negative_timeout=0``), so each path component a
program resolves reaches this process. Requests are served by libfuse's multithreaded loop,
so concurrent callers overlap their latencies as they would on the wire.

Counted (and delayed) operations: getattr (also serves LOOKUP), opendir, readdir, open,
read, readlink, access, statfs. Not delayed: release/releasedir, which the kernel sends
asynchronously after close() returns. Counts are written as JSON to ``--stats`` on unmount.

Usage (foreground, until unmounted with ``fusermount3 -u MOUNT``)::

    python3 bench/slowfs.py SOURCE MOUNT [--latency-ms 2] [--stats FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STAT_KEYS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
)


def _make_ops(source: str, latency_s: float, stats_path: str | None) -> Any:
    import mfusepy  # imported here so the harness can import this module without it

    class SlowPassthrough(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.root = source
            self.latency = latency_s
            self.counts: Counter[str] = Counter()
            self._mutex = threading.Lock()

        def _rt(self, op: str) -> None:
            with self._mutex:
                self.counts[op] += 1
            if self.latency > 0:
                time.sleep(self.latency)

        def _real(self, path: str) -> str:
            return self.root + path

        def destroy(self, path: str) -> None:
            if stats_path:
                tmp = stats_path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(dict(self.counts), f)
                os.replace(tmp, stats_path)

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            self._rt("getattr")
            try:
                st = os.lstat(self._real(path))
            except OSError as e:
                raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
            out = {k: getattr(st, k) for k in STAT_KEYS}
            for k in ("st_atime", "st_mtime", "st_ctime"):
                out[k] = out.pop(k + "_ns")
            return out

        def access(self, path: str, amode: int) -> int:
            self._rt("access")
            if not os.access(self._real(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        def opendir(self, path: str) -> int:
            self._rt("opendir")
            if not os.path.isdir(self._real(path)):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return 0

        def readdir(self, path: str, fh: int) -> list[Any]:
            self._rt("readdir")
            out: list[Any] = [".", ".."]
            with os.scandir(self._real(path)) as it:
                for e in it:
                    mode = 0o040755 if e.is_dir(follow_symlinks=False) else 0o100644
                    if e.is_symlink():
                        mode = 0o120777
                    out.append((e.name, {"st_mode": mode}, 0))
            return out

        def open(self, path: str, flags: int) -> int:
            self._rt("open")
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise mfusepy.FuseOSError(errno.EROFS)
            if not os.path.exists(self._real(path)):
                raise mfusepy.FuseOSError(errno.ENOENT)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._rt("read")
            fd = os.open(self._real(path), os.O_RDONLY)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)

        def readlink(self, path: str) -> str:
            self._rt("readlink")
            return os.readlink(self._real(path))

        def statfs(self, path: str) -> dict[str, Any]:
            self._rt("statfs")
            sv = os.statvfs(self._real(path))
            return {
                k: getattr(sv, k)
                for k in (
                    "f_bavail",
                    "f_bfree",
                    "f_blocks",
                    "f_bsize",
                    "f_favail",
                    "f_ffree",
                    "f_files",
                    "f_flag",
                    "f_frsize",
                    "f_namemax",
                )
            }

    return SlowPassthrough()


def serve(source: str, mount: str, latency_ms: float, stats: str | None) -> None:
    import mfusepy

    ops = _make_ops(os.path.abspath(source), latency_ms / 1000.0, stats)
    mfusepy.FUSE(
        ops,
        mount,
        foreground=True,
        nothreads=False,
        ro=True,
        fsname="slowfs",
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        max_idle_threads=64,
    )


@contextlib.contextmanager
def mounted(
    source: Path, mount: Path, latency_ms: float, stats: Path, python: str = sys.executable
) -> Iterator[Path]:
    """Mount ``source`` at ``mount`` with a slowfs process; always unmounted on exit."""
    mount.mkdir(parents=True, exist_ok=True)
    if stats.exists():
        stats.unlink()
    log = open(stats.with_suffix(".log"), "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [python, __file__, str(source), str(mount), "--latency-ms", str(latency_ms)]
        + ["--stats", str(stats)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount):
            if proc.poll() is not None:
                raise RuntimeError(f"slowfs exited with {proc.returncode}, see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"slowfs did not mount {mount} within 20 s")
            time.sleep(0.05)
        yield mount
    finally:
        if os.path.ismount(mount):
            r = subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)
            if r.returncode != 0:
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(mount)], check=False, capture_output=True
                )
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def read_stats(stats: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads(stats.read_text())
    return data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source")
    p.add_argument("mount")
    p.add_argument("--latency-ms", type=float, default=2.0)
    p.add_argument("--stats", help="write operation counts here (JSON) on unmount")
    a = p.parse_args(argv)
    serve(a.source, a.mount, a.latency_ms, a.stats)


if __name__ == "__main__":
    main()


def calibrate(source: Path, mount: Path, concurrency: int) -> tuple[float, int]:
    """A client with no overhead of its own: ``stat`` of every tag's ``current/link`` below
    ``mount``, relative to its repository's tags directory, from ``concurrency`` threads.
    Returns (seconds, tags). With the operation counts of the mount this tells how close the
    layer itself gets to its model bound (``ops x latency / concurrency``)."""
    from concurrent.futures import ThreadPoolExecutor

    from store import iter_repositories

    dirs: list[tuple[Path, list[str]]] = []
    for _name, repo in iter_repositories(source):
        tags = repo / "_manifests" / "tags"
        dirs.append((mount / tags.relative_to(source), sorted(os.listdir(tags))))

    fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d, _ in dirs]
    jobs = [(fd, t) for fd, (_, names) in zip(fds, dirs, strict=True) for t in names]

    def one(job: tuple[int, str]) -> None:
        os.stat(f"{job[1]}/current/link", dir_fd=job[0], follow_symlinks=False)

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, jobs))
        return time.perf_counter() - start, len(jobs)
    finally:
        for fd in fds:
            os.close(fd)
