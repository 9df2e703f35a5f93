"""The quarantine: blobs `verify` found corrupt, moved out of the registry's tree, kept.

A blob whose content does not hash to its digest is served as it is by the registry, and a
client pushing that layer again is told "already exists", so the damage stays. Moving the
blob's directory out (one rename, as the hold does) makes the registry answer 404: the next
push of the image uploads it again, and pulls fail cleanly instead of with a digest error.

Each entry is `.registry-janitor-quarantine/<hex>-<UTC time>/` in the data directory,
outside `docker/`: the blob's `data` as it was found, and `report.json` (what was found, when,
and the tags whose images it broke). Nothing deletes entries: an operator may want the bytes
to see what went wrong; delete an entry when done with it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from registry_janitor.storage import Storage
from registry_janitor.store import DIGEST, blob_dir, list_names

log = logging.getLogger(__name__)

QUARANTINE_DIR = ".registry-janitor-quarantine"
REPORT = "report.json"
_REPORT_MAX = 16 << 20


@dataclass(frozen=True)
class Entry:
    path: str  # in the storage
    digest: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def when(self) -> float:
        value = self.report.get("quarantined")
        return float(value) if isinstance(value, (int, float)) else 0.0

    @property
    def tags(self) -> dict[str, str]:
        """ "repo:tag" -> the digest it pointed at when the blob was quarantined."""
        found = self.report.get("tags")
        if not isinstance(found, dict):
            return {}
        return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


class Quarantine:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def put(self, digest: str, report: dict[str, Any]) -> Entry:
        """Move the blob out of the registry's tree, with a report beside it.
        FileNotFoundError when the blob is gone."""
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        entry = Entry(
            f"{QUARANTINE_DIR}/{digest.removeprefix('sha256:')}-{stamp}",
            digest,
            {**report, "digest": digest, "quarantined": now},
        )
        self.storage.move(blob_dir(digest), entry.path)
        self.write_report(entry.path, entry.report)
        return entry

    def write_report(self, path: str, report: dict[str, Any]) -> None:
        text = json.dumps(report, indent=2, sort_keys=True) + "\n"
        self.storage.write(f"{path}/{REPORT}", text.encode())

    def entries(self, *, reports: bool = True) -> list[Entry]:
        """Every entry, oldest first; one whose report cannot be read (or, with `reports`
        False, is not read) has an empty report."""
        out = []
        for name in list_names(self.storage, QUARANTINE_DIR):
            hexpart = name.partition("-")[0]
            digest = f"sha256:{hexpart}"
            if not DIGEST.fullmatch(digest):
                continue
            path = f"{QUARANTINE_DIR}/{name}"
            report: dict[str, Any] = {}
            if not reports:
                out.append(Entry(path, digest))
                continue
            try:
                raw, _ = self.storage.read(f"{path}/{REPORT}", _REPORT_MAX)
                loaded = json.loads(raw)
                if isinstance(loaded, dict):
                    report = loaded
            except FileNotFoundError:
                pass  # the run that moved it died before it wrote the report
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s/%s: %s", path, REPORT, exc)
            out.append(Entry(path, digest, report))
        return sorted(out, key=lambda e: (e.when, e.path))

    def find(self, digest: str) -> Entry | None:
        """The newest entry of a digest, if any."""
        found = [e for e in self.entries() if e.digest == digest]
        return found[-1] if found else None
