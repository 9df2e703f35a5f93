"""The janitor's garbage collection against the registry's own, on 200 generated stores.

Each store (seeded, reproducible) mixes single images, indexes with attestation manifests,
layers shared across repositories, overwritten tags (linked but untagged revisions), nested
repositories, a repository inside another, OCI referrers (`subject`), manifests no revision
links, orphan blobs, and young and old blob data. On copies of it:

1. `registry garbage-collect --dry-run` names the blobs it would delete (E); every other
   blob is one it marks.
2. `registry-janitor gc` with no grace deletes exactly E: not one blob more (every blob the
   stock GC marks is still there), not one less (a stock dry run afterwards finds nothing).
3. With a grace period it deletes exactly the old part of E.
4. A full sweep (prune, then the janitor's GC) leaves a store in which the stock dry run
   finds nothing more to delete, and every kept tag is complete.

On both backends: the stores are generated in a directory, and for the s3 case uploaded to a
bucket of the session's RADOS Gateway with their mtimes, where the registry's s3 driver and
the janitor's S3 backend work on them (fewer stores there: every copy is a bucket).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry import REGISTRY_BIN, blob_data, revision_link, tag_link
from registry_janitor import config, registry_gc
from registry_janitor.output import Output
from registry_janitor.sweep import Janitor
from stores import BLOBS, REPOSITORIES, FsStore, S3Store, Store, check_stores, store_factory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from synthetic import Store as Synthetic

STORES = {"filesystem": 200, "s3": int(os.environ.get("ORACLE_S3_STORES", "12"))}
SEED = int(os.environ.get("ORACLE_SEED", "4242"))
NOW = time.time()
OLD = NOW - 30 * 86400
REPOS = ["app", "team/api", "team/api/v2", "a", "a/b/c", "scratch"]


def generate(root: Path, seed: int) -> tuple[Synthetic, dict[str, set[str]]]:
    """A random store; returns it and repo -> tags."""
    rng = random.Random(seed)
    s = Synthetic(root)
    shared = [s.blob(f"shared layer {seed}-{i}".encode()) for i in range(rng.randint(0, 3))]
    tags: dict[str, set[str]] = {}

    def image(label: str) -> str:
        layers = rng.sample(shared, rng.randint(0, len(shared)))
        layers += [s.blob(f"layer {seed} {label} {j}".encode()) for j in range(rng.randint(1, 2))]
        config_blob = s.blob(json.dumps({"label": label, "seed": seed}).encode())
        doc: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config_blob, "size": 10},
            "layers": [{"digest": d, "size": 4} for d in layers],
        }
        return s.blob(json.dumps(doc).encode())

    for repo in rng.sample(REPOS, rng.randint(1, len(REPOS))):
        tags[repo] = set()
        for n in range(rng.randint(1, 5)):
            label = f"{repo}-{n}"
            kind = rng.random()
            if kind < 0.4:
                top = image(label)
                s.revision(repo, top)
            else:  # an index: platform images and attestation manifests, each linked
                children = [image(f"{label}-{p}") for p in range(rng.randint(1, 2))]
                children += [image(f"{label}-att{p}") for p in range(rng.randint(0, 2))]
                for child in children:
                    s.revision(repo, child)
                top = s.index(children)
                s.revision(repo, top)
            roll = rng.random()
            if roll < 0.6:
                s.tag(repo, f"t{n}", top, OLD + n)
            elif roll < 0.7:  # a referrer: a manifest about the image, linked too
                doc = {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"digest": s.blob(b"{}"), "size": 2},
                    "layers": [{"digest": s.blob(f"sbom {label}".encode()), "size": 4}],
                    "subject": {"digest": top, "size": 1},
                }
                s.revision(repo, s.blob(json.dumps(doc).encode()))
            # else: linked but untagged (an overwritten tag)
            if roll < 0.6 and rng.random() < 0.3:  # the same image under a second tag
                s.tag(repo, f"alias{n}", top, OLD + n + 0.5)
            tags[repo] |= {t for t in (f"t{n}", f"alias{n}") if (s.repo(repo) / "_manifests"
                           / "tags" / t).is_dir()}  # fmt: skip
    link_layers(s)
    for i in range(rng.randint(0, 3)):  # manifests no revision links, and their layers
        image(f"unlinked-{i}")
    for i in range(rng.randint(0, 4)):  # orphan blobs: uploads whose push never finished
        s.blob(f"orphan {seed} {i}".encode())
    # Blob data: most old, some young (a grace period keeps those).
    for data in s.blobs.glob("sha256/*/*/data"):
        when = OLD if rng.random() < 0.8 else NOW - rng.randint(0, 3000)
        os.utime(data, (when, when))
    return s, tags


def link_layers(s: Synthetic) -> None:
    """Each repository's `_layers` link for every config and layer its manifests name, as a
    push writes them. The registry finds repositories by their `_layers`: in a bucket, where
    an empty directory does not exist, a repository without a link is invisible to its
    garbage-collect (which then deletes everything that repository's manifests need)."""
    for link in s.repositories.glob("**/_manifests/revisions/sha256/*/link"):
        repo = link.parents[4]
        hexpart = link.parent.name
        doc = json.loads((s.blobs / "sha256" / hexpart[:2] / hexpart / "data").read_bytes())
        for b in [doc.get("config"), *doc.get("layers", [])]:
            if b:
                layer = repo / "_layers" / "sha256" / b["digest"][7:] / "link"
                layer.parent.mkdir(parents=True, exist_ok=True)
                layer.write_text(b["digest"])


_DATA = re.compile(r"sha256/[0-9a-f]{2}/([0-9a-f]{64})/data")


def blobs_in(store: Store, before: float | None = None) -> set[str]:
    """Digests of every blob with data (older than `before`, when given)."""
    out = set()
    for path, f in store.files(BLOBS).items():
        m = _DATA.fullmatch(path)
        if m and (before is None or f.mtime < before):
            out.add(f"sha256:{m[1]}")
    return out


def stock_dry_run(store: Store, conf: Path) -> set[str]:
    conf.write_text(f"version: 0.1\nstorage:\n{store.registry_storage_config()}")
    result = registry_gc.run(REGISTRY_BIN or "registry", conf, dry_run=True)
    if not result.ok and "Path not found: /docker/registry/v2/blobs" in result.message:
        # The s3 driver's garbage-collect fails on a store without any blob (no `blobs/`
        # prefix is left in the bucket); there is nothing to delete.
        assert store.backend == "s3" and not blobs_in(store), result.message
        return set()
    assert result.ok, "\n".join(result.output_tail)
    return set(result.deleted)


def janitor(store: Store, command: str, **flags: str) -> None:
    cfg = config.load(
        {
            **store.janitor_settings(),
            "gc_settle": "0",
            "revision_grace": "0",
            "gc_grace": "0",
            **flags,
        },
        env=store.janitor_env({}),
        command=command,
    )
    sink = io.StringIO()
    with ThreadPoolExecutor(4) as pool:
        stats = Janitor(cfg, Output(as_json=True, stream=sink), pool, threading.Event()).sweep(
            run_prune=command == "sweep", run_gc=True
        )
    assert stats.ok, sink.getvalue()[-2000:]


# (directory, store to copy, which files keep their mtime) -> a new store.
NewStore = Callable[[Path, Store, Callable[[str], bool] | None], Store]


def new_stores(backend: str, request: pytest.FixtureRequest) -> NewStore:
    """A copy of a store (a directory, or a bucket: the generated store uploaded)."""
    bucket = store_factory(backend, request)

    def make(dest: Path, source: Store, dated: Callable[[str], bool] | None) -> Store:
        if backend == "filesystem":
            assert isinstance(source, FsStore)
            shutil.copytree(source.root, dest, symlinks=True)
            return FsStore(dest)
        made = bucket("oracle")
        assert isinstance(made, S3Store)
        if isinstance(source, FsStore):
            made.upload(source.root, dated)
        else:
            source.copy_into(made, dated)
        return made

    return make


def blob_data_file(path: str) -> bool:
    return path.startswith(BLOBS) and path.endswith("/data")


def tag_link_file(path: str) -> bool:
    return "/_manifests/tags/" in path and path.endswith("/current/link")


def complete(store: Store, repo: str, tag: str) -> list[str]:
    """What a kept tag lacks: its manifests' revisions and every blob they reach."""
    todo = [store.read_text(tag_link(repo, tag))]
    problems = []
    while todo:
        d = todo.pop()
        if not store.is_file(revision_link(repo, d)):
            problems.append(f"revision {d}")
        try:
            doc = json.loads(store.read(blob_data(d)))
        except FileNotFoundError:
            problems.append(f"manifest {d}")
            continue
        todo += [c["digest"] for c in doc.get("manifests", [])]
        for b in [doc.get("config"), *doc.get("layers", [])]:
            if b and not store.is_file(blob_data(b["digest"])):
                problems.append(f"blob {b['digest']}")
    return problems


def check_store(tmp_path: Path, seed: int, make: NewStore) -> tuple[int, int]:
    """Runs the four checks on one generated store; (blobs, blobs the stock GC deletes)."""
    s, tags = generate(tmp_path / "generated", seed)
    generated = FsStore(s.root)
    # Each check's copy keeps only the mtimes it depends on: in a bucket, writing an object
    # with a past mtime is a slow, one-at-a-time detour (rgw.py).
    original = make(tmp_path / "store", generated, lambda path: False)
    before = blobs_in(original)
    eligible = stock_dry_run(original, tmp_path / "store.yml")  # a dry run changes nothing
    assert eligible < before or not before, f"seed {seed}: the stock GC would delete everything"

    collected = make(tmp_path / "janitor", original, lambda path: False)  # no grace
    janitor(collected, "gc")
    deleted = before - blobs_in(collected)
    assert deleted == eligible, (
        f"seed {seed}: janitor deleted {sorted(deleted - eligible)} the stock GC marks,"
        f" and kept {sorted(eligible - deleted)} the stock GC would delete"
    )
    assert stock_dry_run(collected, tmp_path / "janitor.yml") == set(), (
        f"seed {seed}: the stock GC still finds garbage"
    )

    graced = make(tmp_path / "grace", generated, blob_data_file)
    janitor(graced, "gc", gc_grace="1h")
    young_kept = before - blobs_in(graced)
    assert young_kept == eligible & blobs_in(generated, NOW - 3600), f"seed {seed}: grace"

    swept = make(tmp_path / "sweep", generated, tag_link_file)  # push order
    keep = str(random.Random(seed).randint(0, 2))
    janitor(swept, "sweep", keep_last_n=keep)
    assert stock_dry_run(swept, tmp_path / "sweep.yml") == set(), (
        f"seed {seed}: garbage left after the sweep"
    )
    for repo in tags:
        for tag in sorted(swept.listdir(f"{REPOSITORIES}/{repo}/_manifests/tags")):
            assert complete(swept, repo, tag) == [], f"seed {seed}: {repo}:{tag} incomplete"
    return len(before), len(eligible)


def test_janitor_gc_deletes_exactly_what_the_registry_gc_would(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The registry's s3 driver panics when AWS_CA_BUNDLE is set (its garbage-collect here).
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    make = new_stores(backend, request)
    stores = STORES[backend]
    sizes = check_stores(
        check_store, [SEED * 1000 + n for n in range(stores)], tmp_path, make, backend
    )
    # The stores really exercise collection: most have garbage, none is all garbage.
    assert sum(1 for _, e in sizes if e) >= stores // 2
