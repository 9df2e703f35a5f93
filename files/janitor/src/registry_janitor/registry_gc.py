"""Runs the registry's own `garbage-collect` (GC_ENGINE=registry), never with `--delete-untagged`.

2.8.x `--delete-untagged` unlinks the children of kept multi-arch images (distribution#3004)
and costs O(manifests x tags); the janitor unlinks unreachable revisions itself instead.

Bytes reclaimed: GC prints `blob eligible for deletion: <digest>` for every blob it deletes.
Their sizes come from the descriptors of the manifests the janitor read while pruning (the
manifests it unlinked name the layers that become garbage), so no second walk of `blobs/` is
needed on a slow filesystem. Blobs no manifest we read names (orphans of aborted pushes) are
counted, their bytes are not.
"""

from __future__ import annotations

import collections
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_ELIGIBLE = re.compile(r"blob eligible for deletion: (sha256:[0-9a-f]{64})")
_TAIL_LINES = 20


@dataclass(frozen=True)
class GcResult:
    ok: bool
    duration: float
    deleted: tuple[str, ...]  # blob digests GC deleted (or would delete in a dry run)
    message: str  # why it failed, or a short summary
    output_tail: tuple[str, ...] = ()


def command(registry_bin: str, registry_config: Path, *, dry_run: bool) -> list[str]:
    return [
        registry_bin,
        "garbage-collect",
        *(["--dry-run"] if dry_run else []),
        str(registry_config),
    ]


def run(registry_bin: str, registry_config: Path, *, dry_run: bool = False) -> GcResult:
    cmd = command(registry_bin, registry_config, dry_run=dry_run)
    start = time.monotonic()
    deleted: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    try:
        # Streamed, not captured whole: GC prints a line per marked blob of every manifest.
        with subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                m = _ELIGIBLE.search(line)
                if m:
                    deleted.append(m.group(1))
                if line.strip():
                    tail.append(line)
            code = proc.wait()
    except FileNotFoundError:
        return GcResult(False, 0.0, (), f"registry binary not found: {registry_bin}")
    except OSError as exc:
        return GcResult(False, 0.0, (), f"cannot run {registry_bin}: {exc.strerror or exc}")
    duration = time.monotonic() - start
    if code != 0:
        last = tail[-1] if tail else "(no output)"
        return GcResult(
            False, duration, tuple(deleted), f"garbage-collect exited {code}: {last}", tuple(tail)
        )
    return GcResult(True, duration, tuple(deleted), "ok", tuple(tail))


def config_enables_blobdescriptor(text: str) -> bool:
    """True when the registry config sets storage.cache.blobdescriptor (text check, no YAML).

    That cache keeps answering "exists" for blobs a GC in another process deleted; a later
    push then skips those layers and the image cannot be pulled (distribution#1803, #4569).
    """
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.fullmatch(r"blobdescriptor\s*:\s*(.*)", line)
        if m and m.group(1).strip().strip("\"'") not in ("", "null", "~"):
            return True
    return False
