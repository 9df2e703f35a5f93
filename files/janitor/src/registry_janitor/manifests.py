"""Manifest blobs and what they reference; reachability from a repository's tags.

Blobs are content addressed and immutable, so a parsed manifest is cached by digest for the
whole run: a layer or index shared by many repositories is read once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from registry_janitor.storage import Storage
from registry_janitor.store import DIGEST, blob_data, pmap_batched

MANIFEST_MAX = 4 * 1024 * 1024  # the registry refuses larger manifests


@dataclass(frozen=True)
class Manifest:
    digest: str
    size: int  # bytes of the manifest blob itself
    children: tuple[str, ...]  # manifests it references: index entries, an OCI `subject`
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
    # OCI 1.1 referrers (signatures, SBOMs) name the manifest they are about.
    if "subject" in doc:
        desc = descriptor(doc["subject"])
        if desc is None:
            return None
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
    """Reads manifest blobs from the store, concurrently, cached by digest."""

    def __init__(self, storage: Storage, pool: Executor | None = None) -> None:
        self.storage = storage
        self.pool = pool
        self._cache: dict[str, Manifest | None] = {}
        self._lock = threading.Lock()
        self.reads = 0  # blobs actually read (cache misses)
        # digest -> why it could not be used ("missing", "not a manifest", an OS error)
        self.problems: dict[str, str] = {}

    def close(self) -> None:
        """Nothing to release; the storage belongs to the caller."""

    def unusable(self, digest: str, why: str) -> None:
        """Never read this blob: its content is known to be wrong (a corrupt blob)."""
        with self._lock:
            self._cache[digest] = None
            self.problems[digest] = why

    def forget(self, digest: str) -> None:
        """Drop a cached failure: the blob may be readable now (put back from the hold)."""
        with self._lock:
            if self._cache.get(digest, 1) is None:
                del self._cache[digest]
                self.problems.pop(digest, None)

    def _load(self, digest: str) -> Manifest | None:
        try:
            raw, st = self.storage.read(blob_data(digest), MANIFEST_MAX + 1)
        except FileNotFoundError:
            return self._problem(digest, "manifest blob missing")
        except OSError as exc:
            return self._problem(digest, f"cannot read manifest blob: {exc.strerror or exc}")
        if not st.is_file:
            return self._problem(digest, "manifest blob is not a regular file")
        if len(raw) > MANIFEST_MAX:
            return self._problem(digest, "larger than any manifest the registry accepts")
        m = parse(digest, raw)
        return m if m is not None else self._problem(digest, "not a manifest the janitor reads")

    def _problem(self, digest: str, why: str) -> Manifest | None:
        """Records why, and returns None (the manifest cannot be used)."""
        with self._lock:
            self.problems[digest] = why
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
    reachable: frozenset[str]  # manifests
    unreadable: frozenset[str]  # reachable manifests we could not read: children unknown
    blobs: frozenset[str] = frozenset()  # configs and layers the readable manifests name

    @property
    def complete(self) -> bool:
        return not self.unreadable

    @property
    def marked(self) -> frozenset[str]:
        """Every blob garbage collection must keep: the manifests and what they name."""
        return self.reachable | self.blobs


def closure(roots: Iterable[str], reader: ManifestReader) -> Reachability:
    """Manifests reachable from `roots`, following indexes (and OCI subjects) to their
    children recursively, and the blobs they name. Each manifest is read once."""
    seen: set[str] = set()
    unreadable: set[str] = set()
    blobs: set[str] = set()
    frontier = set(roots)
    while frontier:
        seen |= frontier
        nxt: set[str] = set()
        for digest, manifest in reader.read_many(frontier).items():
            if manifest is None:
                unreadable.add(digest)
            else:
                nxt.update(manifest.children)
                blobs.update(d for d, _ in manifest.blobs)
        frontier = nxt - seen
    return Reachability(frozenset(seen), frozenset(unreadable), frozenset(blobs))
