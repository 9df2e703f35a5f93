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

from registry_janitor.storage import Storage

# In the data directory (the bucket's root directory on an object store).
GC_PENDING_FILE = ".registry-janitor.gc-pending"
_MAX = 64 << 20


def exists(storage: Storage) -> bool:
    try:
        storage.stat(GC_PENDING_FILE)
    except FileNotFoundError:
        return False
    return True


def sizes(storage: Storage) -> dict[str, int]:
    """The sizes a mark carries; {} when there is no mark or it holds none."""
    try:
        raw, _ = storage.read(GC_PENDING_FILE, _MAX)
        data = json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        return {}
    found = data.get("sizes") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, int)}


def mark(storage: Storage, new_sizes: Mapping[str, int]) -> None:
    """Write (or extend) the mark; atomic, so a reader never sees half a file."""
    merged = {**sizes(storage), **new_sizes}
    storage.write(GC_PENDING_FILE, json.dumps({"sizes": merged}, separators=(",", ":")).encode())


def clear(storage: Storage) -> None:
    storage.delete(GC_PENDING_FILE)
