"""A FUSE passthrough that fails chosen calls: the fault layer of the janitor's fault trials.

It is bench/slowfs.py's passthrough (no latency, no kernel caching) with a check in front of
the operations a network filesystem can fail: readdir, opendir, getattr (also serves the
kernel's LOOKUP, so a path below a failing component fails too), access, open, create,
read, readlink, write, rename, unlink, rmdir, mkdir, utimens. Which calls fail, how and when
is read from a JSON control file at run time (see faultrules.py); each injected fault is
logged with its operation and path. Faults: any errno name (EIO, EACCES, ENOENT, ESTALE,
EINTR, EBUSY, ...), or ``short`` on read: half the bytes asked for (the file is opened with
``direct_io``, so the short count reaches the reader instead of looking like the end of the
file to the page cache).

Usage (foreground, until unmounted with ``fusermount3 -u MOUNT``)::

    python3 faultfs.py SOURCE MOUNT --control rules.json --log faults.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from faultrules import Faults

BENCH = Path(__file__).resolve().parents[4] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import slowfs

# Operations the layer can fail, and which argument(s) are paths.
PATH_OPS = (
    "readdir",
    "opendir",
    "getattr",
    "access",
    "open",
    "create",
    "read",
    "readlink",
    "write",
    "unlink",
    "rmdir",
    "mkdir",
    "utimens",
)
TWO_PATH_OPS = ("rename",)


ERRNOS = {name: code for code, name in errno.errorcode.items()}


def make_ops(source: str, faults: Faults) -> Any:
    """slowfs's passthrough with every operation in PATH_OPS and TWO_PATH_OPS checked first."""
    ops = slowfs._make_ops(source, 0.0, None)
    mfusepy = slowfs._import_mfusepy()

    def checked(op: str, real: Callable[..., Any], npaths: int) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            rule = faults.check(op, *args[:npaths])
            if rule is None:
                return real(*args)
            if rule.fault == "short":
                if op != "read":
                    return real(*args)  # only a read can be short
                data = real(*args)
                return data[: len(data) // 2]
            raise mfusepy.FuseOSError(ERRNOS[rule.fault])

        return call

    # Instance attributes: mfusepy looks operations up by name on the object it is given.
    for op in PATH_OPS:
        setattr(ops, op, checked(op, getattr(ops, op), 1))
    for op in TWO_PATH_OPS:
        setattr(ops, op, checked(op, getattr(ops, op), 2))
    return ops


def serve(source: str, mount: str, control: Path, log: Path) -> None:
    mfusepy = slowfs._import_mfusepy()
    mfusepy.FUSE(
        make_ops(os.path.abspath(source), Faults(control, log)),
        mount,
        foreground=True,
        nothreads=False,
        fsname="faultfs",
        # Nothing cached in the kernel: every lookup, stat and read reaches the layer, so a
        # rule applies from the next call on.
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        direct_io=True,
        max_threads=64,
        max_idle_threads=64,
    )


@contextlib.contextmanager
def mounted(source: Path, mount: Path, control: Path, log: Path) -> Iterator[Path]:
    """``source`` seen through the fault layer at ``mount``; always unmounted on exit."""
    cmd = [sys.executable, __file__, str(source), str(mount)]
    cmd += ["--control", str(control), "--log", str(log)]
    with slowfs.serving(cmd, mount, log.with_suffix(".out")):
        yield mount


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source")
    p.add_argument("mount")
    p.add_argument("--control", type=Path, required=True, help="JSON rules (faultrules.py)")
    p.add_argument("--log", type=Path, required=True, help="injected faults, one JSON line each")
    a = p.parse_args(argv)
    serve(a.source, a.mount, a.control, a.log)


if __name__ == "__main__":
    main()
