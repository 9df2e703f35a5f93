"""Manifest blobs and what they reference; reachability from a repository's tags.

Blobs are content addressed and immutable, so a parsed manifest is cached by digest for the
whole run: a layer or index shared by many repositories is read once.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from registry_janitor.store import DIGEST, pmap_batched

_MANIFEST_MAX = 4 * 1024 * 1024  # the registry refuses larger manifests
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class Manifest:
    digest: str
    size: int  # bytes of the manifest blob itself
    children: tuple[str, ...]  # manifests an index / manifest list references
    blobs: tuple[tuple[str, int], ...]  # (digest, size) of config and layers; size -1: unknown


def parse(digest: str, raw: bytes) -> Manifest | None:
    """None when the blob is not a manifest we understand."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    children: list[str] = []
    blobs: list[tuple[str, int]] = []

    def descriptor(d: object) -> tuple[str, int] | None:
        if (
            isinstance(d, dict)
            and isinstance(d.get("digest"), str)
            and DIGEST.fullmatch(d["digest"])
        ):
            size = d.get("size")
            return d["digest"], size if isinstance(size, int) else -1
        return None

    # OCI image index / Docker manifest list: platform images and attestation manifests.
    for d in doc.get("manifests") or []:
        desc = descriptor(d)
        if desc is None:
            return None  # an index we cannot follow completely must not look complete
        children.append(desc[0])
    for d in [doc.get("config"), *(doc.get("layers") or [])]:
        desc = descriptor(d)
        if desc is not None:
            blobs.append(desc)
    for layer in doc.get("fsLayers") or []:  # schema 1
        if isinstance(layer, dict) and isinstance(layer.get("blobSum"), str):
            blobs.append((layer["blobSum"], -1))
    return Manifest(digest, len(raw), tuple(children), tuple(blobs))


class ManifestReader:
    """Reads manifest blobs from `blobs/`, concurrently, cached by digest."""

    def __init__(self, blobs_dir: Path, pool: Executor | None = None) -> None:
        self.blobs_dir = blobs_dir
        self.pool = pool
        self._cache: dict[str, Manifest | None] = {}
        self._lock = threading.Lock()
        self._dir_fd: int | None = None
        self.reads = 0  # blobs actually read (cache misses)

    def _blobs_fd(self) -> int | None:
        # Opened once: blob paths are then resolved from `blobs/sha256`, not from the store
        # root, which saves lookups per read on a network filesystem.
        with self._lock:
            if self._dir_fd is None:
                try:
                    self._dir_fd = os.open(self.blobs_dir / "sha256", os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    return None
            return self._dir_fd

    def close(self) -> None:
        with self._lock:
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None

    def _load(self, digest: str) -> Manifest | None:
        hexpart = digest.removeprefix("sha256:")
        try:
            dir_fd = self._blobs_fd()
            if dir_fd is None:
                raise FileNotFoundError(digest)
            fd = os.open(f"{hexpart[:2]}/{hexpart}/data", _OPEN_FLAGS, dir_fd=dir_fd)
            try:
                raw = os.read(fd, _MANIFEST_MAX + 1)
            finally:
                os.close(fd)
            return parse(digest, raw) if len(raw) <= _MANIFEST_MAX else None
        except OSError:
            return None

    def _read(self, digest: str) -> Manifest | None:
        with self._lock:
            if digest in self._cache:
                return self._cache[digest]
        manifest = self._load(digest)
        with self._lock:
            self._cache[digest] = manifest
            self.reads += 1
        return manifest

    def _sizes_of(self, digest: str) -> Manifest | None:
        with self._lock:
            if digest in self._cache:
                return self._cache[digest]
        manifest = self._load(digest)
        with self._lock:
            self.reads += 1
        return manifest

    def blob_sizes(self, digests: Iterable[str]) -> dict[str, int]:
        """digest -> size of the manifests `digests` and of every blob they name.

        Reads concurrently like `read_many` but keeps nothing parsed: for the manifests about
        to be unlinked, whose sizes say what GC will free (a large store has many).
        """
        sizes: dict[str, int] = {}
        for m in pmap_batched(self.pool, self._sizes_of, sorted(set(digests))):
            if m is not None:
                sizes.update((d, size) for d, size in m.blobs if size >= 0)
                sizes[m.digest] = m.size
        return sizes

    def read_many(self, digests: Iterable[str]) -> dict[str, Manifest | None]:
        todo = sorted(set(digests))
        return dict(zip(todo, pmap_batched(self.pool, self._read, todo), strict=True))

    def known_sizes(self) -> dict[str, int]:
        """digest -> size for every blob named by a manifest read so far (and the manifests)."""
        sizes: dict[str, int] = {}
        with self._lock:
            manifests = [m for m in self._cache.values() if m is not None]
        for m in manifests:
            for digest, size in m.blobs:
                if size >= 0:
                    sizes[digest] = size
            sizes[m.digest] = m.size
        return sizes


@dataclass(frozen=True)
class Reachability:
    reachable: frozenset[str]
    unreadable: frozenset[str]  # reachable manifests we could not read: children unknown

    @property
    def complete(self) -> bool:
        return not self.unreadable


def closure(roots: Iterable[str], reader: ManifestReader) -> Reachability:
    """Manifests reachable from `roots`, following indexes to their children recursively."""
    seen: set[str] = set()
    unreadable: set[str] = set()
    frontier = set(roots)
    while frontier:
        seen |= frontier
        nxt: set[str] = set()
        for digest, manifest in reader.read_many(frontier).items():
            if manifest is None:
                unreadable.add(digest)
            else:
                nxt.update(manifest.children)
        frontier = nxt - seen
    return Reachability(frozenset(seen), frozenset(unreadable))
