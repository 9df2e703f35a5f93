#!/usr/bin/env python3
"""Checks that a mounted share behaves the way the registry and its janitor need.

Installed by the storagebox role and run on every deploy while the share is mounted:

    storagebox-probe /mnt/storagebox [--results FILE] [--metrics FILE] [--json]

In a scratch directory on the share (removed afterwards) it tries what the registry and
the janitor do: write and read back an upload in chunks, truncate and rewrite a file, rename
a file into place and over an existing file (how uploads and links are committed), rename a
directory (the janitor's trash), set a file's mtime into the past and see a rewrite move it
forward (retention ranks tags by the mtime of their `current/link`), `flock` between two
processes (the janitor's lock), whether `probe-a` and `PROBE-A` are two files, a directory
removed right after its files (SMB keeps a deleted file until its last handle closes), and
the free space.

A failed check is an error (exit 1) with what the share did and what to change. A
case-insensitive share (every Hetzner Storage Box) is a warning: the registry works, but two
tags differing only in case are one tag. Results go to a JSON file and a Prometheus
textfile; both are written whole, atomically. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"

CASE_WARNING = (
    "names differing only in case are one file on this share (SMB without POSIX extensions, "
    "as on every Hetzner Storage Box): a push of tag `Latest` rewrites tag `latest` and the "
    "registry then serves the wrong image under one of them. Never push tags that differ "
    "from an existing tag only in case: use lower-case tags in CI (e.g. `${CI_COMMIT_REF_SLUG}`"
    " or `tr A-Z a-z`). Repository names are lower-case by the registry's rules already."
)

WRITE_REMEDY = (
    "the registry cannot store anything. Check that the share is mounted read-write and the "
    "(sub-)account may write (Hetzner: the sub-account's 'readonly' setting; self-hosted "
    "Samba: `read only = no` and the permissions of the share's directory), and the mount "
    "options uid=/gid= (storagebox_uid/storagebox_gid, equal to registry_uid/registry_gid)."
)


class CheckFailed(Exception):
    """A check found the share misbehaving: what it did, and what to change."""

    def __init__(self, detail: str, remedy: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.remedy = remedy


class CheckWarning(CheckFailed):
    """The share works for the registry but differs in a way its users must know."""


@dataclass
class Check:
    name: str
    status: str
    detail: str
    remedy: str = ""
    seconds: float = 0.0

    def message(self) -> str:
        return f"{self.name}: {self.detail}" + (
            f". What to do: {self.remedy}" if self.remedy else ""
        )


@dataclass
class Report:
    path: str
    checks: list[Check] = field(default_factory=list)
    case_sensitive: bool | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    started: float = 0.0
    duration: float = 0.0

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else OK

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "status": self.status,
            "case_sensitive": self.case_sensitive,
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
            "checks": [asdict(c) for c in self.checks],
            # One line per failed / warned check, for people (the role prints these).
            "failures": [c.message() for c in self.checks if c.status == FAIL],
            "warnings": [c.message() for c in self.checks if c.status == WARN],
        }


def _errtext(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{f' ({name})' if name else ''}"


def write_file(path: Path, data: bytes) -> None:
    """Creates or replaces the content the way the registry's filesystem driver does:
    open without O_TRUNC, truncate, write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    """True as soon as condition() holds, polling for up to `seconds` (client caches)."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            if condition():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class Probe:
    def __init__(self, scratch: Path, settle: float, min_free: int, report: Report) -> None:
        self.dir = scratch
        self.settle = settle
        self.min_free = min_free
        self.report = report

    # Each check raises CheckFailed / CheckWarning, or returns a short "what was seen".

    def write(self) -> str:
        f = self.dir / "write"
        try:
            write_file(f, b"probe\n")
            data = f.read_bytes()
        except OSError as exc:
            raise CheckFailed(
                f"cannot write a file on the share: {_errtext(exc)}",
                WRITE_REMEDY,
            ) from exc
        if data != b"probe\n":
            raise CheckFailed(f"a file written on the share reads back as {data[:40]!r}")
        return "a file written and read back"

    def upload(self) -> str:
        """A blob upload: appended in chunks (reopened each time), renamed into place, read
        back whole and hashed: content that does not match its digest is a corrupt blob."""
        chunks = [os.urandom(1 << 20) for _ in range(3)]
        part, final = self.dir / "upload-data", self.dir / "blob-data"
        try:
            for chunk in chunks:
                with part.open("ab") as out:
                    out.write(chunk)
            os.rename(part, final)
        except OSError as exc:
            raise CheckFailed(
                f"appending to a file and renaming it into place failed: {_errtext(exc)}",
                "the registry commits every upload this way. Mount the share with the kernel "
                "cifs client (vers=3.1.1); FUSE clients without truncate/append support "
                "cannot carry the registry.",
            ) from exc
        want = hashlib.sha256(b"".join(chunks)).hexdigest()
        got = hashlib.sha256(final.read_bytes()).hexdigest()
        if got != want:
            raise CheckFailed(
                f"a 3 MiB upload read back with sha256 {got[:12]}, written {want[:12]}",
                "blobs on this share would not match their digests. Remount without "
                "cache=loose and with the default cache=strict; check the box's health.",
            )
        return "3 MiB in 3 appends, renamed into place, sha256 verified"

    def rename_over(self) -> str:
        old, new = self.dir / "link", self.dir / "link.new"
        write_file(old, b"old\n")
        write_file(new, b"new\n")
        try:
            os.replace(new, old)
        except OSError as exc:
            raise CheckFailed(
                f"renaming a file over an existing one failed: {_errtext(exc)}",
                "the registry commits uploads and tag links by renaming over existing files. "
                "SMB refuses to replace a file that another client holds open: stop tools that "
                "open files on the share (backup, antivirus, indexers); on a self-hosted Samba "
                "server remove VFS modules that forbid it (worm, readonly).",
            ) from exc
        if old.read_bytes() != b"new\n" or new.exists():
            raise CheckFailed(
                "after renaming link.new over link, link does not hold the new content "
                "or link.new still exists",
                "the registry's commits would be lost; use the kernel cifs client.",
            )
        return "link.new replaced link"

    def rename_dir(self) -> str:
        src, trash = self.dir / "tag", self.dir / "trash"
        (src / "current").mkdir(parents=True)
        write_file(src / "current" / "link", b"sha256:0\n")
        trash.mkdir()
        try:
            os.rename(src, trash / "tag")
        except OSError as exc:
            raise CheckFailed(
                f"renaming a directory failed: {_errtext(exc)}",
                "the janitor removes tags by moving their directory into its trash. SMB "
                "refuses to rename a directory while a file below it is open: make sure "
                "nothing else (backup tools, an indexer) keeps files on the share open.",
            ) from exc
        moved = trash / "tag" / "current" / "link"
        if not wait_for(lambda: moved.stat().st_size == 9 and not src.exists(), self.settle):
            raise CheckFailed("after renaming a directory, its content is not at the new name")
        return "a directory with content moved into another"

    def mtime(self) -> str:
        f = self.dir / "current-link"
        write_file(f, b"a\n")
        past = int(time.time()) - 3600
        try:
            os.utime(f, (past, past))
        except OSError as exc:
            raise CheckFailed(
                f"setting a file's mtime failed: {_errtext(exc)}",
                "retention ranks tags by the times of their link files, so the share must "
                "keep the times clients set. Self-hosted Samba: `dos filetimes = yes` lets a "
                "user who does not own a file set its times.",
            ) from exc
        if not wait_for(lambda: abs(f.stat().st_mtime - past) <= 2, self.settle):
            raise CheckFailed(
                f"mtime set one hour into the past reads back as {f.stat().st_mtime - past:+.0f} s"
                " from it",
                "retention ranks tags by the mtime of their link files: the share must keep "
                "the times clients set. Self-hosted Samba: `dos filetimes = yes`.",
            )
        write_file(f, b"b\n")  # a tag pushed again rewrites its link this way
        before = time.time()
        if not wait_for(lambda: f.stat().st_mtime > past + 1800, self.settle):
            raise CheckFailed(
                "rewriting a file did not move its mtime forward "
                f"(still {f.stat().st_mtime - past:+.0f} s from the old time)",
                "retention would rank a re-pushed tag by its first push. Kernel cifs client: "
                "do not mount with cache=loose or a long actimeo=; keep the default cache=strict.",
            )
        skew = f.stat().st_mtime - before
        if abs(skew) > 120:
            raise CheckWarning(
                f"a file rewritten now has an mtime {skew:+.0f} s from this host's clock",
                "the server's clock differs from this host's: janitor_keep_min_age is measured "
                "against it. Check time sync on both sides.",
            )
        return f"utime into the past kept; a rewrite moved mtime forward (skew {skew:+.1f} s)"

    def flock(self) -> str:
        import fcntl

        lock = self.dir / "lock"
        write_file(lock, b"")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(lock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            said = holder.stdout.readline().strip()
            if said != "locked":
                err = holder.stderr.read() if holder.stderr else ""
                raise CheckFailed(
                    f"flock on the share failed: {(said + ' ' + err).strip()}",
                    "the janitor locks a file in the data directory. Add `nobrl` to "
                    "storagebox_mount_options_extra: locks then stay on this host, which is all "
                    "the janitor needs (one host writes the share).",
                )
            with lock.open("rb") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                except PermissionError:
                    pass  # the kernel's cifs client reports a lock held elsewhere as EACCES
                except OSError as exc:
                    raise CheckFailed(
                        f"flock on the share failed: {_errtext(exc)}",
                        "add `nobrl` to storagebox_mount_options_extra (locks stay on this host).",
                    ) from exc
                else:
                    raise CheckFailed(
                        "a second process got an exclusive flock that another process held",
                        "two sweeps could run at once. The kernel cifs client's flock excludes "
                        "processes on one host with or without `nobrl`: check which client "
                        "mounts the share (`findmnt` should say cifs).",
                    )
                holder.stdin.close()
                holder.wait(10)
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: must succeed now
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        return "a second process was refused, then got the lock once it was released"

    def case(self) -> str:
        """Directories, as the registry's tags are: `tags/latest/` and `tags/Latest/`."""
        lower, upper = self.dir / "probe-a", self.dir / "PROBE-A"
        (lower / "lower").mkdir(parents=True)
        folded = ""
        if os.path.lexists(upper):
            folded = "looking up PROBE-A finds probe-a"
        else:
            try:
                upper.mkdir()
            except FileExistsError:
                folded = "creating PROBE-A fails: probe-a exists"
            else:
                (upper / "upper").mkdir()

                def separate() -> bool:
                    return (
                        {"probe-a", "PROBE-A"} <= set(os.listdir(self.dir))
                        and os.listdir(lower) == ["lower"]
                        and os.listdir(upper) == ["upper"]
                    )

                # Still two directories once the client's caches have expired?
                if separate():
                    time.sleep(self.settle)
                if not separate():
                    seen = {
                        n: sorted(os.listdir(self.dir / n))
                        for n in sorted(os.listdir(self.dir))
                        if n.lower() == "probe-a"
                    }
                    folded = f"after making probe-a/lower and PROBE-A/upper the share has {seen}"
        self.report.case_sensitive = not folded
        if folded:
            raise CheckWarning(f"case-insensitive: {folded}", CASE_WARNING)
        return "probe-a and PROBE-A are two directories"

    def free_space(self) -> str:
        st = os.statvfs(self.dir)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        self.report.free_bytes, self.report.total_bytes = free, total
        if total == 0:
            raise CheckWarning("the share reports no size", "free space cannot be watched")
        if free < self.min_free:
            raise CheckFailed(
                f"{free / 2**20:.0f} MiB free of {total / 2**30:.1f} GiB",
                f"below storagebox_probe_min_free_mib ({self.min_free / 2**20:.0f} MiB): pushes "
                "will fail. Lower janitor_keep_last_n, sweep now, or grow the Storage Box.",
            )
        return f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"

    def rmdir_after_unlink(self) -> str:
        d = self.dir / "emptied"
        d.mkdir()
        write_file(d / "f", b"x")
        os.unlink(d / "f")
        started = time.monotonic()
        for attempt in range(60):
            try:
                os.rmdir(d)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise CheckFailed(f"removing an emptied directory failed: {_errtext(exc)}")
                time.sleep(0.1 * min(attempt + 1, 5))
                continue
            waited = time.monotonic() - started
            if attempt:
                raise CheckWarning(
                    f"a directory stayed 'not empty' for {waited:.1f} s after its last file "
                    "was deleted (SMB delete-pending)",
                    "the janitor retries such removals; a sweep may leave trash for the next.",
                )
            return "removed at once"
        raise CheckWarning(
            f"a directory stayed 'not empty' for {time.monotonic() - started:.0f} s after its "
            "last file was deleted (SMB delete-pending)",
            "something keeps deleted files open on the share; the janitor's trash will grow.",
        )


HOLD_LOCK = """
import fcntl, sys
try:
    fh = open(sys.argv[1], "rb")
    fcntl.flock(fh, fcntl.LOCK_EX)
except OSError as exc:
    print("error:", exc, flush=True)
    sys.exit(1)
print("locked", flush=True)
sys.stdin.read()
"""

CHECKS = [
    "write",
    "upload",
    "rename_over",
    "rename_dir",
    "mtime",
    "flock",
    "case",
    "rmdir_after_unlink",
    "free_space",
]


def remove(scratch: Path, settle: float) -> Check:
    """Removes the scratch directory. Deletes may be pending on SMB, and a client's cache
    may still list what it removed: retry until it is gone for good."""
    t0 = time.monotonic()
    error: OSError | None = None
    deadline = t0 + settle + 5
    while True:
        try:
            shutil.rmtree(scratch)
        except FileNotFoundError:
            pass
        except OSError as exc:
            error = exc
        if not os.path.lexists(scratch):
            return Check("cleanup", OK, "scratch directory removed", "", time.monotonic() - t0)
        if time.monotonic() > deadline:
            return Check(
                "cleanup",
                WARN,
                f"could not remove {scratch}: {_errtext(error) if error else 'still there'}",
                "remove it by hand; the next probe uses a new directory.",
                time.monotonic() - t0,
            )
        time.sleep(0.5)


def probe(path: Path, *, settle: float, min_free: int, case_insensitive_fails: bool) -> Report:
    report = Report(str(path), started=time.time())
    t0 = time.monotonic()
    try:
        scratch = Path(
            tempfile.mkdtemp(prefix=f".storagebox-probe.{socket.gethostname()}.", dir=path)
        )
    except OSError as exc:
        report.checks.append(
            Check(
                "write",
                FAIL,
                f"cannot create a directory on the share: {_errtext(exc)}",
                WRITE_REMEDY,
            )
        )
        report.duration = time.monotonic() - t0
        return report
    p = Probe(scratch, settle, min_free, report)
    for name in CHECKS:
        c0 = time.monotonic()
        try:
            detail, status, remedy = getattr(p, name)(), OK, ""
        except CheckWarning as w:
            detail, status, remedy = w.detail, WARN, w.remedy
        except CheckFailed as f:
            detail, status, remedy = f.detail, FAIL, f.remedy
        except OSError as exc:
            detail, status, remedy = f"unexpected error: {_errtext(exc)}", FAIL, ""
        if name == "case" and status == WARN and case_insensitive_fails:
            status = FAIL
        report.checks.append(Check(name, status, detail, remedy, time.monotonic() - c0))
        if name == "write" and status == FAIL:
            break  # nothing else can work
    report.checks.append(remove(scratch, settle))
    report.duration = time.monotonic() - t0
    return report


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(report: Report) -> str:
    path = f'path="{_label(report.path)}"'
    lines = [
        (
            "# HELP storagebox_probe_check_passed 1 if the share passed the check at the last "
            "probe, else 0 (check=case: 0 on a case-insensitive share, a warning)."
        ),
        "# TYPE storagebox_probe_check_passed gauge",
    ]
    lines += [
        f'storagebox_probe_check_passed{{{path},check="{c.name}"}} {int(c.status == OK)}'
        for c in report.checks
    ]
    failures = sum(c.status == FAIL for c in report.checks)
    gauges = [
        ("failures", "Checks that failed at the last probe.", failures),
        (
            "case_sensitive",
            "1 if probe-a and PROBE-A are two files on the share.",
            None if report.case_sensitive is None else int(report.case_sensitive),
        ),
        ("free_bytes", "Bytes available on the share.", report.free_bytes),
        ("size_bytes", "Size of the share.", report.total_bytes),
        ("duration_seconds", "How long the last probe took.", round(report.duration, 3)),
        (
            "last_run_timestamp_seconds",
            "When the last probe ran (Unix time).",
            round(report.started),
        ),
    ]
    for name, help_text, value in gauges:
        if value is None:
            continue
        lines += [
            f"# HELP storagebox_probe_{name} {help_text}",
            f"# TYPE storagebox_probe_{name} gauge",
            f"storagebox_probe_{name}{{{path}}} {value}",
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def human(report: Report) -> str:
    lines = []
    for c in report.checks:
        lines.append(f"{c.status.upper():4} {c.name}: {c.detail}")
        if c.remedy and c.status != OK:
            lines.append(f"     what to do: {c.remedy}")
    lines.append(f"{report.status.upper()}: {report.path} probed in {report.duration:.1f} s")
    return "\n".join(lines)


def is_mount_point(path: Path) -> bool:
    """os.path.ismount misses bind mounts within one filesystem; mountinfo lists them."""
    if os.path.ismount(path):
        return True
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            if point == target:
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="a directory on the mounted share")
    ap.add_argument("--results", type=Path, help="write the results as JSON here")
    ap.add_argument("--metrics", type=Path, help="write a Prometheus textfile here")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds to let client caches expire before trusting a result (default 2)",
    )
    ap.add_argument("--min-free-mib", type=int, default=1024, help="fail below this (MiB)")
    ap.add_argument(
        "--case-insensitive-fails",
        action="store_true",
        help="fail, rather than warn, on a case-insensitive share",
    )
    ap.add_argument(
        "--require-mount",
        action="store_true",
        help="probe nothing (exit 0) unless PATH is a mount point",
    )
    args = ap.parse_args(argv)
    if not args.path.is_dir():
        ap.error(f"{args.path} is not a directory")
    if args.require_mount and not is_mount_point(args.path):
        print(
            json.dumps({"path": str(args.path), "status": "not mounted"})
            if args.json
            else f"{args.path} is not mounted: nothing probed"
        )
        return 0
    report = probe(
        args.path,
        settle=args.settle,
        min_free=args.min_free_mib << 20,
        case_insensitive_fails=args.case_insensitive_fails,
    )
    doc = report.as_dict()
    if args.results:
        write_atomically(args.results, json.dumps(doc, indent=2) + "\n")
    if args.metrics:
        write_atomically(args.metrics, metrics_text(report))
    print(json.dumps(doc) if args.json else human(report))
    return 1 if report.status == FAIL else 0


if __name__ == "__main__":
    sys.exit(main())
