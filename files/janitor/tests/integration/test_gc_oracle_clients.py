"""The GC oracle (test_gc_oracle.py) on generated stores of what real clients push.

Each store (seeded) mixes, per repository: images and multi-platform indexes; BuildKit
registry caches (moby/buildkit cache/remotecache/export.go: an index whose entries are layer
blobs of random layer media types, zstd and Docker ones included, and the cache config; or,
with image-manifest=true, an image manifest whose config is the cache config); cosign
signature / attestation / SBOM tags (sigstore/cosign pkg/oci/remote/remote.go suffixTag);
OCI 1.1 referrers (image-spec manifest.md `subject`), pushed by digest or listed in the
referrers fallback tag (distribution-spec spec.md, Referrers Tag Schema), some with a subject
that is not in the store; index entries of unknown media types or none (a layer blob or a
linked manifest); foreign layers (`urls`, never in the store); nested indexes; overwritten
tags, manifests no revision links, orphan and young blobs. Then, on copies of it:

1. `registry-janitor gc` deletes exactly what `garbage-collect --dry-run` names;
2. a sweep (prune with KEEP_LAST_N 0 to 2, then GC) leaves nothing the stock dry run would
   delete, every tag left is whole (by the registry's rules, foreign layers excepted), and
   signature tags are left exactly when the ordinary tags left reach their image.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from registry import blob_data, revision_link, tag_link
from stores import REPOSITORIES, FsStore, Store, check_stores
from test_gc_oracle import blobs_in, janitor, new_stores, stock_dry_run, tag_link_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from synthetic import Store as Synthetic

STORES = {"filesystem": 60, "s3": int(os.environ.get("ORACLE_S3_STORES", "4"))}
SEED = int(os.environ.get("ORACLE_SEED", "4242"))
NOW = time.time()
OLD = NOW - 30 * 86400
REPOS = ["app", "ci/cache", "team/signed", "charts/x"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER_TYPES = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
]
MANIFEST_TYPES = {OCI_MANIFEST, OCI_INDEX, DOCKER_LIST,
                  "application/vnd.docker.distribution.manifest.v2+json"}  # fmt: skip
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
# Written out here, not taken from the janitor: cosign's and the referrers tag schemes.
SIGNATURE_TAG = re.compile(r"sha256-([0-9a-f]{64})(\.sig|\.att|\.sbom)?")


class Generator:
    def __init__(self, root: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.s = Synthetic(root)
        self.n = 0

    def blob(self, kind: str) -> str:
        self.n += 1
        return self.s.blob(f"{kind} {self.seed} {self.n}".encode())

    def desc(self, digest: str, media_type: str | None, size: int = 4) -> dict[str, Any]:
        return {"digest": digest, "size": size, **({"mediaType": media_type} if media_type else {})}

    def manifest(self, doc: dict[str, Any]) -> str:
        return self.s.blob(json.dumps({"schemaVersion": 2, **doc}).encode())

    def image(self, subject: str | None = None) -> str:
        layers = [self.desc(self.blob("layer"), self.rng.choice(LAYER_TYPES))
                  for _ in range(self.rng.randint(1, 2))]  # fmt: skip
        if self.rng.random() < 0.15:  # a Windows base layer: never uploaded
            layers.insert(0, {**self.desc(f"sha256:{self.rng.getrandbits(256):064x}", FOREIGN),
                              "urls": ["https://mcr.microsoft.com/v2/x/blobs/y"]})  # fmt: skip
        doc: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "config": self.desc(self.blob("config"), "application/vnd.oci.image.config.v1+json"),
            "layers": layers,
        }
        if subject:
            doc["subject"] = self.desc(subject, OCI_MANIFEST)
        return self.manifest(doc)

    def push(self, repo: str) -> str:
        """One push of a random layout; returns the manifest its tag would name."""
        kind = self.rng.choice(["image", "index", "buildkit", "buildkit-manifest", "unknown",
                                "nested"])  # fmt: skip
        if kind == "image":
            top = self.image()
        elif kind in ("index", "nested"):
            children = [self.image() for _ in range(self.rng.randint(1, 2))]
            for c in children:
                self.s.revision(repo, c)
            top = self.manifest(
                {
                    "mediaType": OCI_INDEX,
                    "manifests": [self.desc(c, OCI_MANIFEST) for c in children],
                }
            )
            if kind == "nested":
                self.s.revision(repo, top)
                top = self.manifest({"mediaType": OCI_INDEX,
                                     "manifests": [self.desc(top, OCI_INDEX)]})  # fmt: skip
        elif kind == "buildkit":
            layers = [self.desc(self.blob("cache layer"), self.rng.choice(LAYER_TYPES))
                      for _ in range(self.rng.randint(1, 5))]  # fmt: skip
            config = self.desc(self.blob("cache config"), CACHE_CONFIG)
            top = self.manifest({"mediaType": self.rng.choice([OCI_INDEX, DOCKER_LIST]),
                                 "manifests": [*layers, config]})  # fmt: skip
        elif kind == "buildkit-manifest":
            top = self.manifest({
                "mediaType": OCI_MANIFEST,
                "config": self.desc(self.blob("cache config"), CACHE_CONFIG),
                "layers": [self.desc(self.blob("cache layer"), self.rng.choice(LAYER_TYPES))],
            })  # fmt: skip
        else:  # unknown entries: a layer blob, and a linked manifest, of types nobody knows
            child = self.image()
            self.s.revision(repo, child)
            entries = [
                self.desc(self.blob("future"), self.rng.choice(["application/x-future", None])),
                self.desc(child, self.rng.choice(["application/x-manifest", None])),
            ]
            top = self.manifest({"mediaType": OCI_INDEX, "manifests": entries})  # fmt: skip
        self.s.revision(repo, top)
        return top

    def sign(self, repo: str, subject: str, when: float) -> None:
        """cosign tags, an untagged referrer, or a referrers fallback tag."""
        style = self.rng.choice(["cosign", "referrer", "fallback"])
        if style == "cosign":
            for suffix in self.rng.sample([".sig", ".att", ".sbom"], self.rng.randint(1, 3)):
                sig = self.image()
                self.s.tag(repo, subject.replace(":", "-") + suffix, sig, when)
        else:
            ref = self.image(subject=subject)
            self.s.revision(repo, ref)
            if style == "fallback":
                index = self.manifest(
                    {"mediaType": OCI_INDEX, "manifests": [self.desc(ref, OCI_MANIFEST)]}
                )
                self.s.tag(repo, subject.replace(":", "-"), index, when)  # fmt: skip


def generate(root: Path, seed: int) -> Synthetic:
    g = Generator(root, seed)
    rng = g.rng
    for repo in rng.sample(REPOS, rng.randint(1, len(REPOS))):
        for n in range(rng.randint(1, 4)):
            top = g.push(repo)
            when = OLD + 10 * n
            roll = rng.random()
            if roll < 0.7:
                g.s.tag(repo, f"t{n}", top, when)
            # else: linked but untagged (an overwritten tag)
            if rng.random() < 0.5:
                g.sign(repo, top, when + 1)
        if rng.random() < 0.2:  # a referrer whose subject is not in the store
            ref = g.image(subject=f"sha256:{rng.getrandbits(256):064x}")
            g.s.revision(repo, ref)
    link_blobs(g.s)
    for _ in range(rng.randint(0, 2)):  # manifests no revision links
        g.image()
    for _ in range(rng.randint(0, 3)):  # orphan blobs
        g.blob("orphan")
    for data in g.s.blobs.glob("sha256/*/*/data"):
        when = OLD if rng.random() < 0.8 else NOW - rng.randint(0, 3000)
        os.utime(data, (when, when))
    return g.s


def link_blobs(s: Synthetic) -> None:
    """Each repository's `_layers` link for every blob its manifests name that is in the
    store (as a push writes them; on a bucket a repository is found by its links)."""
    for link in s.repositories.glob("**/_manifests/revisions/sha256/*/link"):
        repo = link.parents[4]
        doc = json.loads(s_read(s, f"sha256:{link.parent.name}"))
        named = [doc.get("config"), *doc.get("layers", []), *doc.get("manifests", [])]
        for b in named:
            if b and (s.blobs / "sha256" / b["digest"][7:9] / b["digest"][7:] / "data").exists():
                layer = repo / "_layers" / "sha256" / b["digest"][7:] / "link"
                layer.parent.mkdir(parents=True, exist_ok=True)
                layer.write_text(b["digest"])


def s_read(s: Synthetic, digest: str) -> bytes:
    return (s.blobs / "sha256" / digest[7:9] / digest[7:] / "data").read_bytes()


def whole(store: Store, repo: str, tag: str) -> tuple[list[str], set[str]]:
    """What a tag lacks by the registry's rules (a manifest reached through an index entry
    of a manifest type, or of another type when its content is a manifest, must be linked;
    every blob named must be there, foreign layers excepted), and the manifests it reaches."""
    todo = [store.read_text(tag_link(repo, tag))]
    problems: list[str] = []
    reached: set[str] = set()
    while todo:
        d = todo.pop()
        if d in reached:
            continue
        reached.add(d)
        if not store.is_file(revision_link(repo, d)):
            problems.append(f"revision {d}")
        try:
            doc = json.loads(store.read(blob_data(d)))
        except FileNotFoundError:
            problems.append(f"manifest {d}")
            continue
        for e in doc.get("manifests", []):
            if e.get("mediaType") in MANIFEST_TYPES or store.is_file(
                revision_link(repo, e["digest"])
            ):
                todo.append(e["digest"])
            elif not store.is_file(blob_data(e["digest"])):
                problems.append(f"entry {e['digest']}")
        for b in [doc.get("config"), *doc.get("layers", [])]:
            if b and not b.get("urls") and not store.is_file(blob_data(b["digest"])):
                problems.append(f"blob {b['digest']}")
    return problems, reached


def check_store(tmp_path: Path, seed: int, make: Any) -> tuple[int, int]:
    generated = FsStore(generate(tmp_path / "generated", seed).root)
    original = make(tmp_path / "store", generated, lambda path: False)
    before = blobs_in(original)
    eligible = stock_dry_run(original, tmp_path / "store.yml")

    collected = make(tmp_path / "janitor", original, lambda path: False)
    janitor(collected, "gc")
    deleted = before - blobs_in(collected)
    assert deleted == eligible, (
        f"seed {seed}: janitor deleted {sorted(deleted - eligible)} the stock GC marks,"
        f" and kept {sorted(eligible - deleted)} the stock GC would delete"
    )

    swept = make(tmp_path / "sweep", generated, tag_link_file)
    janitor(swept, "sweep", keep_last_n=str(random.Random(seed).randint(0, 2)))
    assert stock_dry_run(swept, tmp_path / "sweep.yml") == set(), f"seed {seed}: garbage left"
    for repo in sorted(r for r in REPOS if swept.is_dir(f"{REPOSITORIES}/{r}/_manifests/tags")):
        names = swept.listdir(f"{REPOSITORIES}/{repo}/_manifests/tags")
        linked = {  # before the sweep: what the janitor decided on
            f"sha256:{h}"
            for h in generated.listdir(f"{REPOSITORIES}/{repo}/_manifests/revisions/sha256")
        }
        kept: set[str] = set()
        for tag in sorted(names):
            problems, reached = whole(swept, repo, tag)
            assert problems == [], f"seed {seed}: {repo}:{tag} lacks {problems}"
            m = SIGNATURE_TAG.fullmatch(tag)
            if not (m and f"sha256:{m[1]}" in linked):
                kept |= reached
        pushed = generated.listdir(f"{REPOSITORIES}/{repo}/_manifests/tags")
        for tag in pushed:
            m = SIGNATURE_TAG.fullmatch(tag)
            if m and f"sha256:{m[1]}" in linked:
                assert (tag in names) == (f"sha256:{m[1]}" in kept), (
                    f"seed {seed}: {repo}:{tag} {'outlived' if tag in names else 'left before'}"
                    " its image"
                )
    return len(before), len(eligible)


def test_janitor_gc_matches_the_registry_gc_on_client_layouts(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    make = new_stores(backend, request)
    stores = STORES[backend]
    sizes = check_stores(
        check_store, [SEED * 1000 + 500 + n for n in range(stores)], tmp_path, make, backend
    )
    assert sum(1 for _, e in sizes if e) >= stores // 2
