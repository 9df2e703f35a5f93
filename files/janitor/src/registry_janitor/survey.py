"""Fail closed: the reads a deletion depends on, and a proof that every one of them succeeded.

The janitor deletes only what a *complete* read of the store proves unreachable. A listing
that failed, a stat or a read that failed, a symbolic link the registry would follow and the
janitor does not, an entry the janitor does not understand: each leaves part of the store
unknown, and what is unknown may be what keeps a blob alive.

So every read that decides a deletion goes through a `Survey`. A read that fails is not an
exception the caller may catch and forget: the survey records it as a `Gap` (what, why, and
which repository it leaves unknown) and the read returns what a missing path would. Deleting
code does not take a survey, it takes the `Complete` that `Survey.seal()` returns, and
`seal()` raises `Incomplete`, naming every gap, when there is any. `Complete` cannot be made
any other way, so no code path can delete on a partial view by forgetting a check.

"Gone" (FileNotFoundError) is not a gap: a tag or a revision removed while we read is simply
not there, as the registry sees it too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from registry_janitor.storage import Entry, Files, Stat, Storage

# How many gaps a message names before it says "and N more".
NAMED = 5


@dataclass(frozen=True)
class Gap:
    path: str  # a storage path, or a digest
    why: str
    repository: str | None = None  # the repository it leaves unknown; None: the whole store

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


def describe(gaps: Iterable[Gap]) -> str:
    gaps = list(gaps)
    text = "; ".join(str(g) for g in gaps[:NAMED])
    return text + (f"; and {len(gaps) - NAMED} more" if len(gaps) > NAMED else "")


class Incomplete(OSError):
    """Some read failed: nothing may be deleted on this view (an OSError: a read failed)."""

    def __init__(self, gaps: Iterable[Gap]) -> None:
        self.gaps = tuple(gaps)
        super().__init__(
            f"could not read {len(self.gaps)} part(s) of the store: {describe(self.gaps)}"
        )


_KEY = object()


class Complete:
    """Proof that a survey read everything it was asked to without a gap. Only `seal()`
    makes one; deleting code asks for it."""

    def __init__(self, key: object, reads: int) -> None:
        if key is not _KEY:
            raise TypeError("only Survey.seal() proves a survey complete")
        self.reads = reads


def why(exc: OSError) -> str:
    return str(exc.strerror or exc)


class Survey:
    """Reads through a storage, recording every read that fails (thread-safe)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._gaps: list[Gap] = []
        self._lock = threading.Lock()
        self.reads = 0

    # -- gaps --------------------------------------------------------------------------
    def gap(self, path: str, why: str, repository: str | None = None) -> None:
        with self._lock:
            self._gaps.append(Gap(path, why, repository))

    @property
    def gaps(self) -> tuple[Gap, ...]:
        with self._lock:
            return tuple(self._gaps)

    def gaps_of(self, repository: str) -> list[Gap]:
        """Gaps that leave this repository unknown (its own, and the store-wide ones)."""
        return [g for g in self.gaps if g.repository in (None, repository)]

    def seal(self) -> Complete:
        """The proof that nothing failed; raises Incomplete naming every gap otherwise."""
        gaps = self.gaps
        if gaps:
            raise Incomplete(gaps)
        return Complete(_KEY, self.reads)

    def _count(self) -> None:
        with self._lock:
            self.reads += 1

    # -- reads: a failure is a gap, and the result is what a missing path gives ----------
    def list(self, path: str, repository: str | None = None) -> list[Entry] | None:
        """Entries; None when the directory does not exist or could not be listed."""
        self._count()
        try:
            return self.storage.list(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.gap(path, f"cannot list: {why(exc)}", repository)
            return None

    def stat(self, path: str, repository: str | None = None) -> Stat | None:
        """None when the path does not exist or could not be read."""
        self._count()
        try:
            return self.storage.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.gap(path, f"cannot stat: {why(exc)}", repository)
            return None

    def read(
        self, path: str, limit: int, repository: str | None = None
    ) -> tuple[bytes, Stat] | None:
        """Content and stat; None when the file does not exist or could not be read."""
        self._count()
        try:
            return self.storage.read(path, limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.gap(path, f"cannot read: {why(exc)}", repository)
            return None

    def walk(self, path: str, repository: str | None = None) -> Files:
        """Every file below `path`; [] when there is nothing or it could not be listed."""
        self._count()
        try:
            return self.storage.walk(path)
        except OSError as exc:
            self.gap(path, f"cannot list: {why(exc)}", repository)
            return []
