"""A FUSE passthrough that adds a fixed latency to every operation it serves.

It models a network filesystem (a Storage Box over SMB): every lookup, stat, directory
open, listing, file open, read, write, rename, unlink, rmdir, mkdir, ... is one round trip.
Requests are served by libfuse's multithreaded loop, so concurrent callers overlap their
latencies as they would on the wire.

Kernel caching is an option (``--cache-s``, default 0): how long the kernel may trust the
attributes and names (also "no such file") it got from this process
(``attr_timeout``, ``entry_timeout`` and ``negative_timeout``). 0 makes every path component
a program resolves reach this process, as on SMB without any caching; 1 is what the cifs
client's default ``actimeo=1`` gives (attributes and names trusted for one second).

Counted (and delayed) operations: getattr (also serves LOOKUP), access, opendir, readdir,
open, create, read, write, fsync, truncate, readlink, statfs, mkdir, rmdir, unlink, rename,
symlink, link, chmod, chown, utimens. Not delayed: release/releasedir, which the kernel
sends asynchronously after close() returns; flush is not implemented (the kernel stops
sending it), writes reach the source directly. Counts are written as JSON to ``--stats`` on
unmount.

Usage (foreground, until unmounted with ``fusermount3 -u MOUNT``)::

    python3 bench/slowfs.py SOURCE MOUNT [--latency-ms 2] [--cache-s 0] [--stats FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def _import_mfusepy() -> Any:
    # mfusepy prefers libfuse 2 when both are installed; the mount options here are libfuse 3's.
    if ctypes.util.find_library("fuse3"):
        os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    return mfusepy


def _make_ops(source: str, latency_s: float, stats_path: str | None) -> Any:
    mfusepy = _import_mfusepy()  # here so the harness can import this module without it

    def oserror(exc: OSError) -> Exception:
        return mfusepy.FuseOSError(exc.errno or errno.EIO)

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

        # -- reads -----------------------------------------------------------------------
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            self._rt("getattr")
            try:
                st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
            except OSError as e:
                raise oserror(e) from None
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
            try:
                with os.scandir(self._real(path)) as it:
                    for e in it:
                        mode = 0o040755 if e.is_dir(follow_symlinks=False) else 0o100644
                        if e.is_symlink():
                            mode = 0o120777
                        out.append((e.name, {"st_mode": mode}, 0))
            except OSError as e:
                raise oserror(e) from None
            return out

        def open(self, path: str, flags: int) -> int:
            self._rt("open")
            try:
                return os.open(self._real(path), flags & ~os.O_CREAT)
            except OSError as e:
                raise oserror(e) from None

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._rt("read")
            try:
                return os.pread(fh, size, offset)
            except OSError as e:
                raise oserror(e) from None

        def readlink(self, path: str) -> str:
            self._rt("readlink")
            try:
                return os.readlink(self._real(path))
            except OSError as e:
                raise oserror(e) from None

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

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        # -- changes ---------------------------------------------------------------------
        def _do(self, op: str, fn: Any, *args: Any) -> Any:
            self._rt(op)
            try:
                return fn(*args)
            except OSError as e:
                raise oserror(e) from None

        def create(self, path: str, mode: int, flags: int) -> int:
            return int(self._do("create", os.open, self._real(path), flags | os.O_CREAT, mode))

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return int(self._do("write", os.pwrite, fh, data, offset))

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._do("fsync", os.fdatasync if datasync else os.fsync, fh)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if fh is not None:
                self._do("truncate", os.ftruncate, fh, length)
            else:
                self._do("truncate", os.truncate, self._real(path), length)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            self._do("mkdir", os.mkdir, self._real(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            self._do("rmdir", os.rmdir, self._real(path))
            return 0

        def unlink(self, path: str) -> int:
            self._do("unlink", os.unlink, self._real(path))
            return 0

        def rename(self, old: str, new: str) -> int:
            self._do("rename", os.rename, self._real(old), self._real(new))
            return 0

        def symlink(self, target: str, source: str) -> int:
            self._do("symlink", os.symlink, source, self._real(target))
            return 0

        def link(self, target: str, source: str) -> int:
            self._do("link", os.link, self._real(source), self._real(target))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            self._do("chmod", os.chmod, self._real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            self._do("chown", os.lchown, self._real(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            real = self._real(path)
            if times is None:
                self._do("utimens", lambda: os.utime(real, None, follow_symlinks=False))
            else:
                self._do("utimens", lambda: os.utime(real, ns=times, follow_symlinks=False))
            return 0

    return SlowPassthrough()


def serve(
    source: str, mount: str, latency_ms: float, stats: str | None, cache_s: float = 0.0
) -> None:
    mfusepy = _import_mfusepy()
    ops = _make_ops(os.path.abspath(source), latency_ms / 1000.0, stats)
    mfusepy.FUSE(
        ops,
        mount,
        foreground=True,
        nothreads=False,
        fsname="slowfs",
        attr_timeout=cache_s,
        entry_timeout=cache_s,
        negative_timeout=cache_s,
        # libfuse 3 serves at most 10 requests at once by default: more than the janitor's
        # threads, but the kernel also sends requests of its own (release, forget).
        max_threads=64,
        max_idle_threads=64,
    )


@dataclass
class Mount:
    """A mounted slowfs; ``cpu_s`` (the layer's own CPU time) and ``counts`` (operations
    served, by kind) are filled in once it is unmounted."""

    path: Path
    stats: Path
    cpu_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ops(self) -> int:
        return sum(self.counts.values())


@contextlib.contextmanager
def mounted(
    source: Path,
    mount: Path,
    latency_ms: float,
    stats: Path,
    python: str = sys.executable,
    cache_s: float = 0.0,
) -> Iterator[Mount]:
    """Mount ``source`` at ``mount`` with a slowfs process; always unmounted on exit."""
    if stats.exists():
        stats.unlink()
    info = Mount(mount, stats)
    cmd = [python, __file__, str(source), str(mount), "--latency-ms", str(latency_ms)]
    cmd += ["--cache-s", str(cache_s), "--stats", str(stats)]
    with serving(cmd, mount, stats.with_suffix(".log")) as served:
        yield info
    info.cpu_s = served.cpu_s
    if stats.exists():
        info.counts = read_stats(stats)


@dataclass
class Served:
    """A FUSE process serving a mount; ``cpu_s`` is filled in once it exited."""

    proc: subprocess.Popen[bytes]
    cpu_s: float = 0.0


@contextlib.contextmanager
def serving(cmd: list[str], mount: Path, log_path: Path) -> Iterator[Served]:
    """Start a FUSE process (``cmd``, which mounts ``mount`` in the foreground), wait until
    the mount is there, and always unmount and reap it on exit. Its output goes to
    ``log_path``. Also used by the fault layer (files/janitor/tests/faults/faultfs.py)."""
    mount.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    served = Served(proc)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount):
            if proc.poll() is not None:
                log.flush()
                tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(
                    f"{cmd[1]} exited with {proc.returncode}; the end of {log.name}:\n"
                    + "\n".join(tail)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[1]} did not mount {mount} within 20 s")
            time.sleep(0.05)
        yield served
    finally:
        if os.path.ismount(mount):
            r = subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)
            if r.returncode != 0:
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(mount)], check=False, capture_output=True
                )
        deadline = time.monotonic() + 30
        while proc.returncode is None:
            # wait4 instead of wait: the layer's CPU time comes with it.
            pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(_status)
                served.cpu_s = usage.ru_utime + usage.ru_stime
            elif time.monotonic() > deadline:
                proc.kill()
                deadline = time.monotonic() + 30
            else:
                time.sleep(0.05)
        log.close()


def read_stats(stats: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads(stats.read_text())
    return data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source")
    p.add_argument("mount")
    p.add_argument("--latency-ms", type=float, default=2.0)
    p.add_argument(
        "--cache-s",
        type=float,
        default=0.0,
        help="seconds the kernel may cache attributes and names (0: none; 1: cifs actimeo=1)",
    )
    p.add_argument("--stats", help="write operation counts here (JSON) on unmount")
    a = p.parse_args(argv)
    serve(a.source, a.mount, a.latency_ms, a.stats, a.cache_s)


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
