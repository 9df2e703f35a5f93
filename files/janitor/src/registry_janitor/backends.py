"""Opens the storage a configuration names: a directory tree, or a bucket (boto3, lazily)."""

from __future__ import annotations

from registry_janitor.config import Config
from registry_janitor.executor import TRASH_DIR
from registry_janitor.hold import HELD_BLOBS, HELD_LAYERS
from registry_janitor.quarantine import QUARANTINE_DIR
from registry_janitor.storage import BLOBS, REPOSITORIES, FilesystemStorage, Storage


def open_storage(cfg: Config) -> Storage:
    if cfg.s3 is not None:
        from registry_janitor.s3 import S3Storage

        # A connection per I/O thread, and two for the main thread's own requests.
        return S3Storage(cfg.s3, max_connections=cfg.concurrency + 2)
    # The janitor's own directories are anchors too (garbage collection renames every
    # candidate into the held blobs' directory and deletes it from there; every deleted tag
    # and revision passes through the trash): each is opened once, never through a link.
    anchors = (REPOSITORIES, BLOBS, HELD_BLOBS, HELD_LAYERS, TRASH_DIR, QUARANTINE_DIR)
    return FilesystemStorage(cfg.data_dir, anchors=anchors)


def store_missing(cfg: Config) -> str | None:
    """Why there is no registry store to work on, or None when there is one.

    On a filesystem the store's `docker/` directory must exist: with the Storage Box not
    mounted, the data directory is an empty directory on the root disk, and an empty store
    must not look like a successful sweep. In a bucket the bucket must answer; a store
    nobody pushed to yet is simply empty there (an object store has no empty directories).
    """
    if cfg.s3 is None:
        store_dir = cfg.repositories_dir.parent
        if store_dir.is_dir():
            return None
        return (
            f"no registry store at {store_dir}: is the storage mounted? (A registry that was"
            " never pushed to has none yet.) Nothing done."
        )
    from registry_janitor.s3 import S3Storage

    try:
        storage = S3Storage(cfg.s3, max_connections=1)
        try:
            storage.probe()
        finally:
            storage.close()
    except OSError as exc:
        return f"the bucket does not answer ({cfg.s3.describe()}): {exc}. Nothing done."
    return None
