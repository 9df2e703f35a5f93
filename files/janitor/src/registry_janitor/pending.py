"""The GC-pending mark: pruning removed something that garbage-collect has not collected yet.

The mark lives in the data directory and is written before the first deletion, so a GC that
fails, is skipped or is killed is retried by the next sweep. It also carries the sizes
(digest -> bytes) of the blobs named by the manifests pruning unlinked: the deployment runs
`prune` and `gc` as separate processes (the registry is read-only only around GC), and the
`gc` process can then say how many bytes it reclaimed without walking `blobs/`.

An empty file (written by older versions) is a valid mark with no sizes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from registry_janitor import atomic


def sizes(path: Path) -> dict[str, int]:
    """The sizes a mark carries; {} when there is no mark or it holds none."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    found = data.get("sizes") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, int)}


def mark(path: Path, new_sizes: Mapping[str, int]) -> None:
    """Write (or extend) the mark; atomic, so a reader never sees half a file."""
    merged = {**sizes(path), **new_sizes}
    atomic.write_text(path, json.dumps({"sizes": merged}, separators=(",", ":")))


def clear(path: Path) -> None:
    path.unlink(missing_ok=True)
