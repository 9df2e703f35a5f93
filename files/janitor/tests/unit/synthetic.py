"""Synthetic registry trees on disk, laid out exactly as the filesystem driver does."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from registry_janitor.storage import FilesystemStorage


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = root / "docker" / "registry" / "v2"
        self.repositories = self.v2 / "repositories"
        self.blobs = self.v2 / "blobs"
        self.repositories.mkdir(parents=True)
        self.blobs.mkdir(parents=True)

    @property
    def storage(self) -> FilesystemStorage:
        """A fresh storage on this store (each holds its own directory descriptors)."""
        return FilesystemStorage(self.root)

    def blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        h = digest[7:]
        path = self.blobs / "sha256" / h[:2] / h / "data"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return digest

    def image(self, label: str, shared: bytes = b"base") -> str:
        layers = [self.blob(shared), self.blob(f"layer {label}".encode())]
        config = self.blob(json.dumps({"label": label}).encode())
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config, "size": 10},
            "layers": [{"digest": d, "size": 4} for d in layers],
        }
        return self.blob(json.dumps(doc).encode())

    def index(self, children: list[str]) -> str:
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"digest": c, "size": 1} for c in children],
        }
        return self.blob(json.dumps(doc).encode())

    def repo(self, name: str) -> Path:
        path = self.repositories / name
        (path / "_manifests" / "revisions" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "_manifests" / "tags").mkdir(parents=True, exist_ok=True)
        (path / "_layers" / "sha256").mkdir(parents=True, exist_ok=True)
        return path

    def revision(self, name: str, digest: str, mtime: float | None = None) -> None:
        """A revision link, by default written two days ago (older than any grace period)."""
        link = self.repo(name) / "_manifests" / "revisions" / "sha256" / digest[7:] / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)
        when = time.time() - 2 * 86400 if mtime is None else mtime
        os.utime(link, (when, when))

    def tag(self, name: str, tag: str, digest: str, mtime: float) -> None:
        self.revision(name, digest)
        tag_dir = self.repo(name) / "_manifests" / "tags" / tag
        link = tag_dir / "current" / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)
        index = tag_dir / "index" / "sha256" / digest[7:] / "link"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(digest)
        os.utime(link, (mtime, mtime))

    def age_everything(self, mtime: float) -> None:
        for dirpath, dirnames, filenames in os.walk(self.repositories):
            for n in dirnames + filenames:
                os.utime(os.path.join(dirpath, n), (mtime, mtime), follow_symlinks=False)


class Faulty:
    """A storage that fails the way a flaky network mount does, for chosen calls, and lets a
    test watch every call (`before(method, args)` runs first)."""

    def __init__(
        self,
        inner: FilesystemStorage,
        faults: dict[tuple[str, str], OSError] | None = None,
        before: Callable[[str, tuple[object, ...]], None] | None = None,
        fail_all: dict[str, OSError] | None = None,
    ) -> None:
        self.inner = inner
        self.faults = faults or {}  # (method, storage path) -> error raised instead
        self.fail_all = fail_all or {}  # method -> error raised for every path
        self.before = before

    def __getattr__(self, method: str) -> object:
        real = getattr(self.inner, method)
        if not callable(real):  # an attribute (renames, listing_is_cheap)
            return real

        def call(*args: object) -> object:
            if self.before is not None:
                self.before(method, args)
            if method in self.fail_all:
                raise self.fail_all[method]
            if args and (method, args[0]) in self.faults:
                raise self.faults[(method, args[0])]
            return real(*args)

        return call
