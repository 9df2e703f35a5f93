"""What `manifests.parse` and `manifests.closure` make of the layouts real clients push.

Each layout follows its client's source (cited per test); the closure runs on a real
filesystem store (synthetic.Store) so the reads, the digest check and the faults are real.
The integration tests (integration/test_client_layouts.py) push the same layouts to the
registry and compare garbage collection with the registry's own.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from registry_janitor import manifests
from registry_janitor.manifests import ManifestReader, closure, parse
from synthetic import Faulty, Store

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
EMPTY = "application/vnd.oci.empty.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def desc(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def fake_digest(i: int) -> str:
    return f"sha256:{i:064x}"


def put(s: Store, doc: dict[str, Any]) -> str:
    return s.blob(json.dumps(doc).encode())


def layer(s: Store, label: str) -> dict[str, Any]:
    data = gzip.compress(f"layer {label}".encode(), mtime=0)
    s.blob(data)
    return desc(data, OCI_LAYER)


def cache_config(layers: list[dict[str, Any]]) -> bytes:
    """moby/buildkit cache/remotecache/v1/types/spec.go CacheConfig: no schemaVersion."""
    return json.dumps(
        {
            "layers": [{"blob": d["digest"], "parent": i - 1} for i, d in enumerate(layers)],
            "records": [{"digest": fake_digest(7), "layers": [{"layer": len(layers) - 1}]}],
        }
    ).encode()


def image(s: Store, label: str, **extra: Any) -> str:
    config = s.blob(json.dumps({"label": label}).encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": 10},
        "layers": [layer(s, label)],
        **extra,
    }  # fmt: skip
    return put(s, doc)


def blob_digests(m: manifests.Manifest) -> set[str]:
    return {d for d, _ in m.blobs}


# -- parse ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("index_type", "layer_type"), [(OCI_INDEX, OCI_LAYER),
                                                         (DOCKER_LIST, DOCKER_LAYER)])  # fmt: skip
def test_buildkit_cache_index_lists_blobs_not_manifests(index_type: str, layer_type: str) -> None:
    """moby/buildkit cache/remotecache/export.go: with image-manifest=false (the default) the
    cache is an index (OCI, or a Docker manifest list with oci-mediatypes=false) whose entries
    are the cache's layers (AddCacheBlob) and its cache config (SetConfig)."""
    layers = [desc(f"l{i}".encode(), layer_type) for i in range(3)]
    config = desc(cache_config(layers), CACHE_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": index_type, "manifests": [*layers, config]}
    m = parse("sha256:" + "a" * 64, json.dumps(doc).encode())
    assert m is not None
    assert m.children == ()
    assert blob_digests(m) == {d["digest"] for d in [*layers, config]}


def test_buildkit_cache_image_manifest_marks_its_config_and_layers() -> None:
    """export.go with image-manifest=true: an OCI image manifest whose config is the cache
    config (media type application/vnd.buildkit.cacheconfig.v0)."""
    layers = [desc(f"l{i}".encode(), OCI_ZSTD) for i in range(2)]
    config = desc(cache_config(layers), CACHE_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    m = parse("sha256:" + "a" * 64, json.dumps(doc).encode())
    assert m is not None and m.children == ()
    assert blob_digests(m) == {config["digest"], *(d["digest"] for d in layers)}


def test_index_entries_are_classified_by_media_type() -> None:
    """Entries of a manifest type are children only; of a known blob type blobs only; of an
    unknown type, or none, both (marked, and followed if they read as a manifest)."""
    entries = [
        {"mediaType": OCI_MANIFEST, "digest": fake_digest(1), "size": 1},
        {"mediaType": DOCKER_MANIFEST, "digest": fake_digest(2), "size": 1},
        {"mediaType": OCI_INDEX, "digest": fake_digest(3), "size": 1},
        {"mediaType": OCI_ZSTD, "digest": fake_digest(4), "size": 1},
        {"mediaType": FOREIGN, "digest": fake_digest(5), "size": 1, "urls": ["https://x/y"]},
        {"mediaType": EMPTY, "digest": fake_digest(6), "size": 2},
        {"mediaType": "application/vnd.example.future+json", "digest": fake_digest(7), "size": 1},
        {"digest": fake_digest(8), "size": 1},
    ]
    m = parse(fake_digest(99), json.dumps({"schemaVersion": 2, "manifests": entries}).encode())
    assert m is not None
    assert m.children == tuple(fake_digest(i) for i in (1, 2, 3, 7, 8))
    assert blob_digests(m) == {fake_digest(i) for i in (4, 5, 6, 7, 8)}
    assert dict(m.listed)[fake_digest(7)] == "application/vnd.example.future+json"
    assert dict(m.listed)[fake_digest(8)] == ""


def test_referrer_subject_is_recorded_not_followed_nor_marked() -> None:
    """image-spec manifest.md (OCI 1.1): `subject`, `artifactType`, the empty config."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": EMPTY, "digest": digest_of(b"{}"), "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": fake_digest(2), "size": 3}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": fake_digest(1), "size": 4},
    }  # fmt: skip
    m = parse(fake_digest(9), json.dumps(doc).encode())
    assert m is not None
    assert m.children == () and m.subject == fake_digest(1)
    assert blob_digests(m) == {digest_of(b"{}"), fake_digest(2)}


def test_a_subject_the_janitor_cannot_read_is_no_subject_and_stops_nothing() -> None:
    """image-spec descriptor.md allows other digest algorithms; a subject is never followed."""
    doc = {
        "schemaVersion": 2,
        "config": {"digest": fake_digest(1), "size": 1},
        "subject": {"mediaType": OCI_MANIFEST, "digest": "sha512:" + "b" * 128, "size": 1},
    }
    m = parse(fake_digest(9), json.dumps(doc).encode())
    assert m is not None and m.subject is None and blob_digests(m) == {fake_digest(1)}


def test_foreign_and_zstd_layers_are_blobs() -> None:
    """distribution v2.8.3 schema2 (foreign layers carry `urls`, the blob is never uploaded)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": fake_digest(1), "size": 1},
        "layers": [
            {"mediaType": FOREIGN, "digest": fake_digest(2), "size": 1,
             "urls": ["https://mcr.microsoft.com/v2/windows/blobs/x"]},
            {"mediaType": OCI_ZSTD, "digest": fake_digest(3), "size": 1},
        ],
    }  # fmt: skip
    m = parse(fake_digest(9), json.dumps(doc).encode())
    assert m is not None and m.children == ()
    assert blob_digests(m) == {fake_digest(1), fake_digest(2), fake_digest(3)}


def test_schema1_names_its_fs_layers() -> None:
    doc = {"schemaVersion": 1, "fsLayers": [{"blobSum": fake_digest(1)}], "signatures": []}
    m = parse(fake_digest(9), json.dumps(doc).encode())
    assert m is not None and blob_digests(m) == {fake_digest(1)}


@pytest.mark.parametrize(
    "raw",
    [
        b"\x1f\x8b\x08\x00 a gzip layer",
        b"[1, 2]",
        cache_config([desc(b"x", OCI_LAYER)]),  # JSON, but no schemaVersion
        json.dumps({"schemaVersion": 3, "layers": []}).encode(),
        json.dumps({"schemaVersion": True}).encode(),
    ],
)
def test_what_the_registry_would_not_serve_as_a_manifest_is_not_one(raw: bytes) -> None:
    """distribution v2.8.3 registry/storage/manifeststore.go Get: schema version 1 or 2."""
    assert parse(digest_of(raw), raw) is None
    assert not manifests.looks_like_manifest(raw)


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 2, "manifests": [{"size": 1}]},  # an entry without a digest
        {"schemaVersion": 2, "manifests": {"digest": fake_digest(1)}},
        {"schemaVersion": 2, "manifests": [{"digest": "sha512:" + "a" * 128, "size": 1}]},
    ],
)
def test_a_manifest_that_cannot_be_followed_completely_does_not_parse(
    doc: dict[str, Any],
) -> None:
    raw = json.dumps(doc).encode()
    assert parse(digest_of(raw), raw) is None and manifests.looks_like_manifest(raw)


# -- closure on a store -----------------------------------------------------------------------


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def reach(
    s: Store, *roots: str, storage: Any = None
) -> tuple[manifests.Reachability, ManifestReader]:
    reader = ManifestReader(storage if storage is not None else s.storage)
    return closure(set(roots), reader), reader


def test_buildkit_cache_index_is_marked_without_reading_its_layers(s: Store) -> None:
    layers = [layer(s, str(i)) for i in range(3)]
    config = s.blob(cache_config(layers))
    top = put(s, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                  "manifests": [*layers, desc(cache_config(layers), CACHE_CONFIG)]})  # fmt: skip
    r, reader = reach(s, top)
    assert r.complete and r.reachable == {top}
    assert r.blobs == {config, *(d["digest"] for d in layers)}
    assert reader.reads == 1  # only the index itself


def test_unknown_entry_that_is_a_blob_is_marked_and_does_not_stall(s: Store) -> None:
    lay = layer(s, "x")
    top = put(s, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                  "manifests": [{**lay, "mediaType": "application/x-future-layer"}]})  # fmt: skip
    r, _ = reach(s, top)
    assert r.complete and r.reachable == {top} and r.blobs == {lay["digest"]}


def test_unknown_entry_that_is_a_manifest_is_followed(s: Store) -> None:
    child = image(s, "child")
    child_blobs = parse(child, (s.blobs / "sha256" / child[7:9] / child[7:] / "data").read_bytes())
    assert child_blobs is not None
    top = put(s, {"schemaVersion": 2, "manifests": [{"digest": child, "size": 1}]})
    r, _ = reach(s, top)
    assert r.complete and r.reachable == {top, child}
    assert blob_digests(child_blobs) <= r.blobs


def test_a_known_manifest_entry_whose_blob_is_a_layer_is_a_plain_blob(s: Store) -> None:
    """The registry accepts it (manifestlisthandler.go verifyManifest: the entry need only
    exist, `_layers` included); it names nothing, so it must not stop collection."""
    lay = layer(s, "x")
    top = put(s, {"schemaVersion": 2, "manifests": [{**lay, "mediaType": OCI_MANIFEST}]})
    r, _ = reach(s, top)
    assert r.complete and lay["digest"] in r.blobs and lay["digest"] not in r.reachable


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, "application/x-unknown", None])
def test_a_missing_index_entry_fails_closed_and_says_where_it_is_listed(
    s: Store, media_type: str | None
) -> None:
    entry: dict[str, Any] = {"digest": fake_digest(5), "size": 1}
    if media_type:
        entry["mediaType"] = media_type
    top = put(s, {"schemaVersion": 2, "manifests": [entry]})
    r, reader = reach(s, top)
    assert r.unreadable == {fake_digest(5)}
    assert "missing" in reader.problems[fake_digest(5)]
    assert f"listed by index {top}" in reader.problems[fake_digest(5)]


def test_an_unknown_entry_whose_content_does_not_match_its_digest_fails_closed(s: Store) -> None:
    lay = layer(s, "x")
    path = s.blobs / "sha256" / lay["digest"][7:9] / lay["digest"][7:] / "data"
    path.write_bytes(b"damaged")
    top = put(s, {"schemaVersion": 2, "manifests": [{**lay, "mediaType": "application/x"}]})
    r, reader = reach(s, top)
    assert r.unreadable == {lay["digest"]}
    assert "does not match its digest" in reader.problems[lay["digest"]]


@pytest.mark.parametrize("fault", [errno.EIO, errno.EACCES, errno.ESTALE])
def test_a_read_error_on_an_unknown_entry_fails_closed(s: Store, fault: int) -> None:
    lay = layer(s, "x")
    top = put(s, {"schemaVersion": 2, "manifests": [{**lay, "mediaType": "application/x"}]})
    path = f"docker/registry/v2/blobs/sha256/{lay['digest'][7:9]}/{lay['digest'][7:]}/data"
    faulty = Faulty(s.storage, {("read", path): OSError(fault, "injected")})
    r, reader = reach(s, top, storage=faulty)
    assert r.unreadable == {lay["digest"]} and "injected" in reader.problems[lay["digest"]]


def test_a_large_unknown_entry_is_a_blob_without_reading_it_all(s: Store) -> None:
    data = random.Random(1).randbytes(manifests.MANIFEST_MAX + 10)
    big = s.blob(data)
    top = put(s, {"schemaVersion": 2, "manifests": [{"digest": big, "size": len(data)}]})
    r, _ = reach(s, top)
    assert r.complete and big in r.blobs and big not in r.reachable


def test_a_referrer_does_not_keep_its_subject(s: Store) -> None:
    """image-spec manifest.md: `subject` is a weak association; the registry's own
    garbage-collect ignores it (References() is config and layers), and so does the mark:
    a missing subject is no failure, a present one is not kept by its referrer."""
    subject = image(s, "app")
    ref = image(s, "sig", subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 1})
    dangling = image(s, "sig2", subject={"mediaType": OCI_MANIFEST, "digest": fake_digest(1),
                                         "size": 1})  # fmt: skip
    r, _ = reach(s, ref, dangling)
    assert r.complete and r.reachable == {ref, dangling}


def test_a_linked_revision_that_is_not_a_manifest_fails_closed(s: Store) -> None:
    lay = layer(s, "x")
    r, reader = reach(s, lay["digest"])
    assert r.unreadable == {lay["digest"]} and "not a manifest" in reader.problems[lay["digest"]]


def test_nested_indexes_are_followed(s: Store) -> None:
    leaf = image(s, "leaf")
    inner = put(
        s,
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": leaf, "size": 1}],
        },
    )
    outer = put(
        s,
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_INDEX, "digest": inner, "size": 1}],
        },
    )
    r, _ = reach(s, outer)
    assert r.complete and r.reachable == {outer, inner, leaf}


# -- generated: the mark covers everything the registry could need ----------------------------


def test_generated_graphs_mark_everything_or_fail_closed(s: Store) -> None:
    """Random graphs of indexes, manifests and blobs, entries of random media types (right,
    wrong, unknown, none), some blobs missing, damaged or unreadable. Whenever the closure
    says complete, it marks every blob that a manifest reachable by the registry's own rules
    (follow an entry only if its content is a manifest) names; whenever it cannot be sure
    (a read error, a damaged blob, a missing manifest), it says incomplete."""
    rng = random.Random(7)
    types = [OCI_MANIFEST, OCI_INDEX, OCI_LAYER, "application/x-unknown", None]
    outcomes = {"complete": 0, "incomplete": 0, "plain": 0}
    for case in range(150):
        root = s.root.parent / f"case{case}"
        st = Store(root)
        layers = [layer(st, f"{case}-{i}")["digest"] for i in range(4)]
        made: list[str] = []
        for i in range(rng.randint(1, 5)):
            if made and rng.random() < 0.5:
                entries = []
                for d in rng.sample(made + layers, rng.randint(1, min(3, len(made) + 4))):
                    t = rng.choice(types)
                    entries.append({"digest": d, "size": 1, **({"mediaType": t} if t else {})})
                made.append(put(st, {"schemaVersion": 2, "manifests": entries}))
            else:
                made.append(image(st, f"{case}-m{i}"))
        top = made[-1]
        faults: dict[tuple[str, str], OSError] = {}
        fault_kind = rng.choice(["none", "missing", "damaged", "eio"])
        victim = rng.choice(made[:-1] + layers) if len(made) > 1 else None
        if victim is not None and fault_kind != "none":
            path = st.blobs / "sha256" / victim[7:9] / victim[7:] / "data"
            if fault_kind == "missing":
                path.unlink()
            elif fault_kind == "damaged":
                path.write_bytes(b"damaged")
            else:
                rel = f"docker/registry/v2/blobs/sha256/{victim[7:9]}/{victim[7:]}/data"
                faults[("read", rel)] = OSError(errno.EIO, "injected")
        reader = ManifestReader(Faulty(st.storage, faults))
        r = closure({top}, reader)
        needed, sure = registry_view(st, top, faults)
        outcomes["complete" if r.complete else "incomplete"] += 1
        outcomes["plain"] += bool(r.blobs & reader.plain)
        if r.complete:
            assert sure, f"case {case}: complete, but a needed read could not be trusted"
            assert needed <= r.marked, f"case {case}: unmarked {needed - r.marked}"
        else:
            assert not sure, f"case {case}: incomplete without cause: {reader.problems}"
    assert min(outcomes.values()) >= 10, outcomes  # every kind of case really occurred


def registry_view(
    st: Store, top: str, faults: dict[tuple[str, str], OSError]
) -> tuple[set[str], bool]:
    """Independent of the janitor: every digest the registry could need from `top` (what a
    manifest names; an index entry followed when its stored content is a manifest, unless
    its media type says it is a layer), and whether every content that decides this could be
    read and trusted."""
    needed: set[str] = set()
    sure = True
    todo = [(top, "root")]
    while todo:
        d, kind = todo.pop()
        needed.add(d)
        if kind == "blob":
            continue
        path = st.blobs / "sha256" / d[7:9] / d[7:] / "data"
        rel = f"docker/registry/v2/blobs/sha256/{d[7:9]}/{d[7:]}/data"
        if ("read", rel) in faults or not path.exists():
            sure = False
            continue
        raw = path.read_bytes()
        if digest_of(raw) != d:
            sure = False
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not (isinstance(doc, dict) and doc.get("schemaVersion") in (1, 2)):
            sure = sure and kind != "root"
            continue
        for e in doc.get("manifests", []):
            todo.append((e["digest"], "blob" if e.get("mediaType") == OCI_LAYER else "entry"))
        for b in [doc.get("config"), *doc.get("layers", [])]:
            if b:
                needed.add(b["digest"])
    return needed, sure
