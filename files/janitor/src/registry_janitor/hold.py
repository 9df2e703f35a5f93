"""The hold: what the janitor took out of the registry's view but may have to put back.

Garbage collection cannot see a client that HEADs an old unreferenced blob (200), skips its
upload and then PUTs a manifest naming it. So a candidate blob is first *held*: its directory
is renamed into `.registry-janitor-held/blobs/<hex>` (one step; from then on the registry answers
404 and clients upload it again). After a settle period the janitor re-reads what was pushed
meanwhile, puts back every held blob a new manifest names, and only then deletes the rest. An
empty repository's `_layers` is held the same way, so a push that lands while the repository is
removed gets its layer links back.

A run that dies leaves held entries behind; the next run starts by resolving them (every blob
goes back; layers go back where the repository has manifests again), before anything else.

On an object store there is no rename: a blob's `data` is copied into the hold, then the
original is deleted, and putting it back is the reverse (see s3.py for why every step of
that is safe).
"""

from __future__ import annotations

import logging

from registry_janitor.storage import REPOSITORIES, Storage
from registry_janitor.store import HEX, blob_data, blob_dir, list_names

log = logging.getLogger(__name__)

HOLD_DIR = ".registry-janitor-held"
HELD_BLOBS = f"{HOLD_DIR}/blobs"
HELD_LAYERS = f"{HOLD_DIR}/layers"


def _layers_entry(repo: str) -> str:
    # Repository names never contain `%` (the registry allows [a-z0-9._-] and `/`).
    return f"{HELD_LAYERS}/{repo.replace('/', '%')}"


def _exists(storage: Storage, path: str) -> bool:
    try:
        storage.stat(path)
    except FileNotFoundError:
        return False
    return True


class Hold:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- blobs --------------------------------------------------------------------------
    def _held(self, digest: str) -> str:
        return f"{HELD_BLOBS}/{digest.removeprefix('sha256:')}"

    def hold_blob(self, digest: str) -> bool:
        """Take a blob out of the registry's view; False when it is already gone."""
        try:
            if self.storage.renames:  # the directory, in one step
                self.storage.move(blob_dir(digest), self._held(digest))
            else:  # its one object: copied, then deleted
                self.storage.move(blob_data(digest), f"{self._held(digest)}/data")
        except FileNotFoundError:
            return False
        return True

    def restore_blob(self, digest: str) -> bool:
        """Put a held blob back. When the registry has the blob again (a client uploaded it
        while it was held), the held copy is the same content and is dropped. True when the
        registry has the blob afterwards."""
        held = self._held(digest)
        target = blob_dir(digest)
        if not self.storage.renames:
            held, target = f"{held}/data", blob_data(digest)
            if not _exists(self.storage, target):
                try:
                    self.storage.move(held, target)
                    return True
                except FileNotFoundError:
                    return _exists(self.storage, target)
            self.drop_blob(digest)
            return True
        if not _exists(self.storage, f"{target}/data"):
            try:
                self.storage.move(held, target)
                return True
            except FileNotFoundError:
                return _exists(self.storage, f"{target}/data")
            except OSError:
                # Taken meanwhile (a directory is there again): fall through and drop ours.
                if not _exists(self.storage, f"{target}/data"):
                    raise
        self.drop_blob(digest)
        return True

    def drop_blob(self, digest: str) -> None:
        held = self._held(digest)
        if not self.storage.renames:  # its one object
            self.storage.delete(f"{held}/data")
            return
        # A blob directory holds only `data`: unlink it, then remove the directory, instead
        # of opening and listing it (round trips on a network filesystem). Anything else in
        # it (or a symlink in its place) leaves rmdir failing, and the whole entry goes.
        self.storage.delete(f"{held}/data")
        try:
            self.storage.rmdir(held)
        except FileNotFoundError:
            pass
        except OSError:
            self.storage.delete(held)

    def drop_blobs(self, digests: list[str]) -> dict[str, OSError]:
        """Delete held blobs in batches (an object store: one request per 1,000); digest ->
        error for those that failed. Only for storages without rename (their held blob is
        one object); a filesystem deletes each held directory with drop_blob."""
        paths = {f"{self._held(d)}/data": d for d in digests}
        return {paths[p]: exc for p, exc in self.storage.delete_many(list(paths)).items()}

    def held_blobs(self) -> list[str]:
        return [f"sha256:{h}" for h in list_names(self.storage, HELD_BLOBS) if HEX.fullmatch(h)]

    # -- a removed repository's `_layers` ------------------------------------------------
    def hold_layers(self, repo: str) -> bool:
        try:
            self.storage.move(f"{REPOSITORIES}/{repo}/_layers", _layers_entry(repo))
        except FileNotFoundError:
            return False
        return True

    def restore_layers(self, repo: str) -> None:
        """Put back every held layer link the repository does not have again, then drop the
        rest (links a new upload wrote meanwhile are newer than ours)."""
        held = f"{_layers_entry(repo)}/sha256"
        live = f"{REPOSITORIES}/{repo}/_layers/sha256"
        for name in list_names(self.storage, held):
            if not _exists(self.storage, f"{live}/{name}"):
                try:
                    self.storage.move(f"{held}/{name}", f"{live}/{name}")
                except FileNotFoundError:
                    pass
        self.storage.delete(_layers_entry(repo))

    def drop_layers(self, repo: str) -> None:
        self.storage.delete(_layers_entry(repo))

    def held_layers(self) -> list[str]:
        return [n.replace("%", "/") for n in list_names(self.storage, HELD_LAYERS)]

    def repository_in_use(self, repo: str) -> bool:
        """A push reached the repository after (or while) it was removed: it has a revision
        or a tag again (a push links its manifest as a revision before it tags it)."""
        base = f"{REPOSITORIES}/{repo}/_manifests"
        return bool(
            list_names(self.storage, f"{base}/revisions/sha256")
            or list_names(self.storage, f"{base}/tags")
        )

    # -- after a crash -------------------------------------------------------------------
    def resolve_interrupted(self) -> tuple[int, int]:
        """Put back what a run that died left held: every blob (the next collection decides
        again), and the layers of repositories that are in use again. (blobs, layers)."""
        blobs = self.held_blobs()
        for digest in blobs:
            self.restore_blob(digest)
        layers = self.held_layers()
        for repo in layers:
            self.settle_layers(repo)
        return len(blobs), len(layers)

    def settle_layers(self, repo: str) -> bool:
        """After the settle period: back if the repository is in use again, else dropped.
        True when they went back."""
        if self.repository_in_use(repo):
            self.restore_layers(repo)
            return True
        self.drop_layers(repo)
        return False
