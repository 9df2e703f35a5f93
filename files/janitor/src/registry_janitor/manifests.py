"""Manifest blobs and what they reference; reachability from a repository's tags.

Blobs are content addressed and immutable, so a parsed manifest is cached by digest for the
whole run: a layer or index shared by many repositories is read once.

An index's entries are classified by media type: manifests (followed), blobs (marked, never
read: a BuildKit registry cache lists its layers and cache config this way), or unknown
(marked, and followed only if the blob turns out to be a manifest). What a client may push
and how each layout is read: README "What clients push".
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from registry_janitor.storage import Storage
from registry_janitor.store import DIGEST, blob_data, pmap_batched

MANIFEST_MAX = 4 * 1024 * 1024  # the registry refuses larger manifests

# Media types of manifests: an index entry of one of these is a manifest to follow.
# (opencontainers/image-spec specs-go/v1/mediatype.go; distribution manifest/schema1,
# schema2, manifestlist.)
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)

# Media types that are never manifests: an index entry of one of these is a blob to mark,
# not read. A BuildKit registry cache (moby/buildkit cache/remotecache/export.go, the
# default image-manifest=false) lists its layers and its cache config in an index this way.
BLOB_TYPES = frozenset(
    {
        # OCI layers (image-spec specs-go/v1/mediatype.go), zstd and non-distributable too
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        # Docker layers, foreign (Windows base) layers and configs (distribution schema2)
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.docker.plugin.v1+json",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.empty.v1+json",  # OCI 1.1 artifacts' empty config
        "application/vnd.buildkit.cacheconfig.v0",  # buildkit cache/remotecache/v1/types
        # attestations and signatures (in-toto, DSSE, cosign pkg/types/media.go)
        "application/vnd.in-toto+json",
        "application/vnd.dsse.envelope.v1+json",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "application/vnd.cyclonedx+json",
        "application/vnd.cyclonedx+xml",
        "application/vnd.syft+json",
        "text/spdx",
        "text/spdx+json",
        # Helm charts (helm/helm pkg/registry/constants.go)
        "application/vnd.cncf.helm.config.v1+json",
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        "application/vnd.cncf.helm.chart.provenance.v1.prov",
        "application/tar+gzip",
    }
)


@dataclass(frozen=True)
class Manifest:
    digest: str
    size: int  # bytes of the manifest blob itself
    # Manifests it references, to follow: index entries of a manifest media type or of an
    # unknown one.
    children: tuple[str, ...]
    # (digest, size) of its config and layers, and the index entries that are not manifests
    # (or may not be: those of an unknown media type); size -1: unknown.
    blobs: tuple[tuple[str, int], ...]
    # The media type each child is listed with ("" when the entry has none), for messages.
    listed: tuple[tuple[str, str], ...] = ()
    # An OCI 1.1 referrer's `subject`: the manifest it is about (a signature's image). A weak
    # reference (image-spec manifest.md): not followed, so it keeps nothing alive, just as
    # the registry's own garbage-collect ignores it; retention reads it (plan.py).
    subject: str | None = None


def _descriptor(d: object) -> tuple[str, int] | None:
    if isinstance(d, dict) and isinstance(d.get("digest"), str) and DIGEST.fullmatch(d["digest"]):
        size = d.get("size")
        return d["digest"], size if isinstance(size, int) and not isinstance(size, bool) else -1
    return None


def is_manifest_document(doc: object) -> bool:
    """Whether the registry would serve this JSON as a manifest (distribution v2.8.3
    registry/storage/manifeststore.go Get): schema version 1 or 2. Anything else is a plain
    blob to the registry: nothing it names can be reached through it."""
    return (
        isinstance(doc, dict)
        and doc.get("schemaVersion") in (1, 2)
        and not isinstance(doc.get("schemaVersion"), bool)
    )


def parse(digest: str, raw: bytes) -> Manifest | None:
    """None when the blob is not a manifest we can follow completely."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not is_manifest_document(doc):
        return None
    assert isinstance(doc, dict)
    children: list[str] = []
    listed: list[tuple[str, str]] = []
    blobs: list[tuple[str, int]] = []
    # OCI image index / Docker manifest list: platform images and attestation manifests;
    # a BuildKit cache's layers and cache config.
    entries = doc.get("manifests")
    if entries is not None and not isinstance(entries, list):
        return None
    for d in entries or []:
        desc = _descriptor(d)
        if desc is None:
            return None  # an index we cannot follow completely must not look complete
        assert isinstance(d, dict)
        media_type = d.get("mediaType")
        media_type = media_type if isinstance(media_type, str) else ""
        if media_type in BLOB_TYPES:
            blobs.append(desc)
            continue
        if media_type not in MANIFEST_TYPES:
            blobs.append(desc)  # marked whatever it turns out to be
        children.append(desc[0])
        listed.append((desc[0], media_type))
    # OCI 1.1 referrers (signatures, SBOMs) name the manifest they are about. Nothing is
    # followed through it, so one the janitor cannot read (another digest algorithm) is
    # simply no subject.
    subject_desc = _descriptor(doc.get("subject"))
    subject = subject_desc[0] if subject_desc is not None else None
    for d in [doc.get("config"), *(doc.get("layers") or [])]:
        desc = _descriptor(d)
        if desc is not None:
            blobs.append(desc)
    for layer in doc.get("fsLayers") or []:  # schema 1
        if isinstance(layer, dict) and isinstance(layer.get("blobSum"), str):
            blobs.append((layer["blobSum"], -1))
    return Manifest(digest, len(raw), tuple(children), tuple(blobs), tuple(listed), subject)


def looks_like_manifest(raw: bytes) -> bool:
    """Whether the registry would take this content for a manifest."""
    try:
        return is_manifest_document(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False


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
        # Read completely, content matches the digest, and not a manifest (a layer, a cache
        # config): a plain blob, which names nothing the registry could follow.
        self.plain: set[str] = set()

    def close(self) -> None:
        """Nothing to release; the storage belongs to the caller."""

    def unusable(self, digest: str, why: str) -> None:
        """Never read this blob: its content is known to be wrong (a corrupt blob)."""
        with self._lock:
            self._cache[digest] = None
            self.problems[digest] = why
            self.plain.discard(digest)

    def note(self, digest: str, context: str) -> None:
        """Adds where a digest that cannot be used is referenced to its problem."""
        with self._lock:
            why = self.problems.get(digest, "unreadable")
            if context not in why:
                self.problems[digest] = f"{why} ({context})"

    def forget(self, digest: str) -> None:
        """Drop a cached failure: the blob may be readable now (put back from the hold)."""
        with self._lock:
            if self._cache.get(digest, 1) is None:
                del self._cache[digest]
                self.problems.pop(digest, None)
                self.plain.discard(digest)

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
            # Never a manifest: the registry refuses larger ones.
            return self._not_a_manifest(digest, st.size)
        m = parse(digest, raw)
        if m is not None:
            return m
        if looks_like_manifest(raw):
            return self._problem(
                digest,
                "a manifest the janitor cannot follow completely (an index entry without a"
                " sha256 digest, or `manifests` not a list): no blob is deleted while it is"
                " linked; delete the tags that reach it",
            )
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            return self._problem(
                digest,
                "its content does not match its digest (a damaged blob or a read that went"
                " wrong; `registry-janitor verify` checks and quarantines damaged blobs)",
            )
        return self._not_a_manifest(digest, len(raw))

    def _not_a_manifest(self, digest: str, size: int) -> Manifest | None:
        with self._lock:
            self.plain.add(digest)
        return self._problem(digest, f"not a manifest (a blob of {size} bytes)")

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

    def subjects(self, digests: Iterable[str]) -> dict[str, str]:
        """digest -> its OCI subject, for those of `digests` that are referrers. Reads like
        `blob_sizes`, keeping nothing parsed (the unreachable revisions of a large store)."""
        todo = sorted(set(digests))
        return {
            d: m.subject
            for d, m in zip(todo, pmap_batched(self.pool, self._sizes_of, todo), strict=True)
            if m is not None and m.subject is not None
        }

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
    blobs: frozenset[str] = frozenset()  # configs, layers and other blobs they name

    @property
    def complete(self) -> bool:
        return not self.unreadable

    @property
    def marked(self) -> frozenset[str]:
        """Every blob garbage collection must keep: the manifests and what they name."""
        return self.reachable | self.blobs


def _context(listings: set[tuple[str, str]]) -> str:
    """How a digest that could not be followed is referenced, for the message."""
    parts = []
    for parent, how in sorted(listings)[:3]:
        parts.append(f"listed by index {parent} as {how or 'an entry without a media type'}")
    return "; ".join(parts) + (" ..." if len(listings) > 3 else "")


def closure(roots: Iterable[str], reader: ManifestReader) -> Reachability:
    """Manifests reachable from `roots`, following indexes to their children recursively,
    and the blobs they name. Each manifest is read once. An OCI subject is not followed
    (a weak reference: see Manifest.subject).

    A root (a linked revision) must read as a manifest, or the reachability is incomplete
    (fail closed: what it names is unknown). So must a child, with one exception: an index
    entry (of any media type) whose blob reads completely, matches its digest and is not a
    manifest by the registry's rules is a plain blob. The registry accepts one (an index's
    entries need only exist, `_layers` included), and it names nothing. A missing index
    entry, a read error or content that does not match its digest stays a failure.
    """
    root_set = frozenset(roots)
    seen: set[str] = set()
    unreadable: set[str] = set()
    plain: set[str] = set()
    blobs: set[str] = set()
    # child -> {(parent, how it is listed)}: only digests reached as children
    listings: dict[str, set[tuple[str, str]]] = {}
    frontier = set(root_set)
    while frontier:
        seen |= frontier
        nxt: set[str] = set()
        for digest, manifest in reader.read_many(frontier).items():
            if manifest is not None:
                nxt.update(manifest.children)
                blobs.update(d for d, _ in manifest.blobs)
                for child, how in manifest.listed:
                    listings.setdefault(child, set()).add((digest, how))
            elif digest not in root_set and digest in reader.plain:
                plain.add(digest)
            else:
                unreadable.add(digest)
        frontier = nxt - seen
    for digest in unreadable & listings.keys():
        reader.note(digest, _context(listings[digest]))
    return Reachability(frozenset(seen - plain), frozenset(unreadable), frozenset(blobs | plain))
