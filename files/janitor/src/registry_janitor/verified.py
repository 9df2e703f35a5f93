"""What `verify` has verified, kept on the share, and what it hashes next.

The state is `.registry-janitor.verified` (blob -> when verified, and the size and mtime of
the `data` it hashed) and `.registry-janitor.verified.d/` (a journal of batches committed
during a run), in the data directory, written atomically through the storage interface.
`queue` and `take` are pure: they decide the order and what fits the byte budget.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from registry_janitor import store
from registry_janitor.storage import Storage

log = logging.getLogger(__name__)

STATE_FILE = ".registry-janitor.verified"
JOURNAL_DIR = ".registry-janitor.verified.d"
_STATE_MAX = 1 << 30


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Record:
    """A verification: when, and the size and mtime of the `data` it hashed."""

    at: float
    size: int
    mtime: float

    def covers(self, blob: Blob) -> bool:
        return self.size == blob.size and self.mtime == blob.mtime


# -- what to hash (pure) ------------------------------------------------------------------
def queue(
    blobs: Iterable[Blob], records: Mapping[str, Record], now: float, interval: int | None
) -> tuple[list[Blob], list[Blob]]:
    """(never verified in their current content, newest first; verified longer than
    `interval` ago, least recently verified first). `interval` None: never again."""
    new: list[Blob] = []
    due: list[tuple[float, Blob]] = []
    for b in blobs:
        rec = records.get(b.digest)
        if rec is None or not rec.covers(b):
            new.append(b)
        elif interval is not None and now - rec.at >= interval:
            due.append((rec.at, b))
    new.sort(key=lambda b: (-b.mtime, b.digest))
    due.sort(key=lambda x: (x[0], x[1].digest))
    return new, [b for _, b in due]


def take(blobs: Sequence[Blob], max_bytes: int | None) -> list[Blob]:
    """The first blobs, in order, until `max_bytes` are reached: the last one may cross the
    limit (else a blob larger than the budget would never be verified)."""
    if max_bytes is None:
        return list(blobs)
    out: list[Blob] = []
    total = 0
    for b in blobs:
        if total >= max_bytes:
            break
        out.append(b)
        total += b.size
    return out


# -- state --------------------------------------------------------------------------------
class State:
    """Verification records on the share: a state file plus a journal of batches."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._journal: list[str] = []  # batch files read or written by this process
        self._seq = 0

    def load(self) -> dict[str, Record]:
        records: dict[str, Record] = {}
        self._merge(records, STATE_FILE)
        for name in store.list_names(self.storage, JOURNAL_DIR, dirs_only=False):
            if name.endswith(".json"):
                self._journal.append(f"{JOURNAL_DIR}/{name}")
                self._merge(records, f"{JOURNAL_DIR}/{name}")
        return records

    def _merge(self, records: dict[str, Record], path: str) -> None:
        try:
            raw, _ = self.storage.read(path, _STATE_MAX)
            data = json.loads(raw or b"{}")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Only costs work (those blobs are hashed again), never a wrong verdict.
            log.warning("cannot read %s (%s); its blobs count as not verified", path, exc)
            return
        blobs = data.get("blobs") if isinstance(data, dict) else None
        if not isinstance(blobs, dict):
            return
        for hexpart, rec in blobs.items():
            if (
                isinstance(rec, list)
                and len(rec) == 3
                and all(isinstance(x, (int, float)) for x in rec)
                and store.HEX.fullmatch(hexpart)
            ):
                old = records.get(f"sha256:{hexpart}")
                if old is None or rec[0] >= old.at:
                    records[f"sha256:{hexpart}"] = Record(float(rec[0]), int(rec[1]), rec[2])

    @staticmethod
    def _encode(records: Mapping[str, Record]) -> bytes:
        blobs = {
            d.removeprefix("sha256:"): [round(r.at, 3), r.size, r.mtime]
            for d, r in sorted(records.items())
        }
        return json.dumps({"version": 1, "blobs": blobs}, separators=(",", ":")).encode()

    def commit(self, batch: Mapping[str, Record]) -> None:
        """One new journal file (atomic): a run killed after this keeps the batch."""
        self._seq += 1
        path = f"{JOURNAL_DIR}/{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.json"
        self.storage.write(path, self._encode(batch))
        self._journal.append(path)

    def compact(self, records: Mapping[str, Record]) -> None:
        """The state file replaced by `records` (atomic), then the journal removed: a run
        killed in between reads the journal again next time, which changes nothing."""
        self.storage.write(STATE_FILE, self._encode(records))
        for path in self._journal:
            try:
                self.storage.delete(path)
            except OSError as exc:
                log.debug("journal file %s stays for the next run: %s", path, exc)
        self._journal = []
