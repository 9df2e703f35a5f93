"""Which calls fail, shared by the FUSE fault layer (faultfs.py) and the S3 fault proxy
(faultproxy.py): rules read from a JSON control file, and a log of every fault injected.

The control file is re-read whenever it changes (its mtime and size are checked on every
call), so a test steers a running layer by rewriting it (atomically: `write_control`).
It holds ``{"rules": [RULE, ...]}``; a RULE is an object with

- ``id``: a name for the log (default: its position);
- ``ops``: the operations it applies to (faultfs: readdir, opendir, getattr, open, read,
  rename, unlink, rmdir, mkdir, ...; faultproxy: list, get, head, put, copy, delete,
  delete_many, head_bucket); empty or missing: all;
- ``path``: a regular expression searched (``re.search``) in the path below the mount
  (``/docker/registry/v2/...``) or in the object key / listing prefix; a rename or a copy
  matches on either side; missing: every path;
- ``bucket``: (proxy only) the bucket it applies to;
- ``fault``: what the call gets instead: an errno name (EIO, EACCES, ENOENT, ESTALE, EINTR,
  EBUSY, ...) or ``short`` (a read returns half the bytes asked) for faultfs; ``503``
  (SlowDown), ``500`` (InternalError), ``reset`` (the connection is reset) or ``truncate``
  (a listing keeps its first half and says IsTruncated without a NextContinuationToken) for
  the proxy;
- when: ``nth`` (the first matching call that fails, 1-based, default 1), ``times`` (how
  many matching calls fail from then on; default: all), ``probability`` (each candidate
  call fails with this probability, from an RNG seeded with ``seed``), ``after`` (a file:
  nothing matches until it exists; the trial runner creates it when the janitor reaches a
  phase).

Counters start again whenever the control file changes. Every injected fault is appended to
the log file as one JSON line: ``{"rule", "op", "path", "fault", "time"}``.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Rule:
    id: str
    fault: str
    ops: frozenset[str] = frozenset()
    path: re.Pattern[str] | None = None
    bucket: str | None = None
    nth: int = 1
    times: int | None = None
    probability: float = 1.0
    after: str | None = None
    rng: random.Random = field(default_factory=random.Random)
    seen: int = 0  # matching calls so far (once `after` exists)
    fired: int = 0

    @classmethod
    def parse(cls, raw: dict[str, Any], position: int) -> Rule:
        return cls(
            id=str(raw.get("id", position)),
            fault=str(raw["fault"]),
            ops=frozenset(raw.get("ops") or ()),
            path=re.compile(raw["path"]) if raw.get("path") else None,
            bucket=raw.get("bucket"),
            nth=int(raw.get("nth", 1)),
            times=None if raw.get("times") is None else int(raw["times"]),
            probability=float(raw.get("probability", 1.0)),
            after=raw.get("after"),
            rng=random.Random(raw.get("seed", 0)),
        )

    def matches(self, op: str, paths: tuple[str, ...], bucket: str | None) -> bool:
        if self.ops and op not in self.ops:
            return False
        if self.bucket is not None and bucket != self.bucket:
            return False
        if self.path is not None and not any(self.path.search(p) for p in paths):
            return False
        return self.after is None or os.path.exists(self.after)

    def fires(self) -> bool:
        """Called for each matching call, in order: does this one fail?"""
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.fired >= self.times):
            return False
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


class Faults:
    """The rules of a control file, reloaded when it changes, and the fault log."""

    def __init__(self, control: Path, log: Path) -> None:
        self.control = control
        self.log = log
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None
        self._rules: list[Rule] = []

    def _reload(self) -> None:
        try:
            st = os.stat(self.control)
        except FileNotFoundError:
            self._version, self._rules = None, []
            return
        version = (st.st_mtime_ns, st.st_size)
        if version == self._version:
            return
        try:
            raw = json.loads(self.control.read_text() or "{}")
        except (OSError, ValueError):
            return  # being rewritten: keep the rules we have, look again next call
        self._version = version
        self._rules = [Rule.parse(r, i) for i, r in enumerate(raw.get("rules", []))]

    def check(self, op: str, *paths: str, bucket: str | None = None) -> Rule | None:
        """The rule that makes this call fail (logged), or None."""
        with self._lock:
            self._reload()
            for rule in self._rules:
                if rule.matches(op, paths, bucket) and rule.fires():
                    entry = {
                        "rule": rule.id,
                        "op": op,
                        "path": paths[0] if len(paths) == 1 else list(paths),
                        "fault": rule.fault,
                        "time": round(time.time(), 3),
                    }
                    with self.log.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                    return rule
        return None


def write_control(control: Path, rules: list[dict[str, Any]]) -> None:
    """Replace the rules in one step (a reader sees the old or the new file). The mtime is
    bumped past the previous one: two writes within a timestamp tick still count as a change."""
    old = control.stat().st_mtime_ns if control.exists() else 0
    tmp = control.with_name(control.name + ".tmp")
    tmp.write_text(json.dumps({"rules": rules}))
    now = max(time.time_ns(), old + 1_000_000)
    os.utime(tmp, ns=(now, now))
    os.replace(tmp, control)


def read_log(log: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The faults injected so far (from a byte offset: those since it)."""
    try:
        with log.open() as f:
            f.seek(offset)
            text = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
