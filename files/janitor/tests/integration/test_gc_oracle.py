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
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from registry import REGISTRY_BIN
from registry_janitor import config, registry_gc
from registry_janitor.output import Output
from registry_janitor.sweep import Janitor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from synthetic import Store

STORES = 200
SEED = int(os.environ.get("ORACLE_SEED", "4242"))
NOW = time.time()
OLD = NOW - 30 * 86400
REPOS = ["app", "team/api", "team/api/v2", "a", "a/b/c", "scratch"]


def generate(root: Path, seed: int) -> tuple[Store, dict[str, set[str]]]:
    """A random store; returns it and repo -> tags."""
    rng = random.Random(seed)
    s = Store(root)
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
    for i in range(rng.randint(0, 3)):  # manifests no revision links, and their layers
        image(f"unlinked-{i}")
    for i in range(rng.randint(0, 4)):  # orphan blobs: uploads whose push never finished
        s.blob(f"orphan {seed} {i}".encode())
    # Blob data: most old, some young (a grace period keeps those).
    for data in s.blobs.glob("sha256/*/*/data"):
        when = OLD if rng.random() < 0.8 else NOW - rng.randint(0, 3000)
        os.utime(data, (when, when))
    return s, tags


def all_blobs(root: Path) -> set[str]:
    blobs = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}" for p in blobs.glob("*/*/data")}


def old_blobs(root: Path, before: float) -> set[str]:
    blobs = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}" for p in blobs.glob("*/*/data") if p.stat().st_mtime < before}


def stock_dry_run(root: Path) -> set[str]:
    conf = root.parent / f"{root.name}.yml"
    conf.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    result = registry_gc.run(REGISTRY_BIN or "registry", conf, dry_run=True)
    assert result.ok, "\n".join(result.output_tail)
    return set(result.deleted)


def janitor(root: Path, command: str, **flags: str) -> None:
    cfg = config.load(
        {"data_dir": str(root), "gc_settle": "0", "revision_grace": "0", "gc_grace": "0", **flags},
        env={},
        command=command,
    )
    sink = io.StringIO()
    with ThreadPoolExecutor(4) as pool:
        stats = Janitor(cfg, Output(as_json=True, stream=sink), pool, threading.Event()).sweep(
            run_prune=command == "sweep", run_gc=True
        )
    assert stats.ok, sink.getvalue()[-2000:]


def copy(s: Store, dest: Path) -> Path:
    shutil.copytree(s.root, dest, symlinks=True)
    return dest


def complete(root: Path, repo: str, tag: str) -> list[str]:
    """What a kept tag lacks: its manifests' revisions and every blob they reach."""
    rdir = root / "docker" / "registry" / "v2" / "repositories" / repo
    blobs = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    todo = [(rdir / "_manifests" / "tags" / tag / "current" / "link").read_text()]
    problems = []
    while todo:
        d = todo.pop()
        h = d.removeprefix("sha256:")
        if not (rdir / "_manifests" / "revisions" / "sha256" / h / "link").is_file():
            problems.append(f"revision {d}")
        data = blobs / h[:2] / h / "data"
        if not data.is_file():
            problems.append(f"manifest {d}")
            continue
        doc = json.loads(data.read_bytes())
        todo += [c["digest"] for c in doc.get("manifests", [])]
        for b in [doc.get("config"), *doc.get("layers", [])]:
            if b and not (blobs / b["digest"][7:9] / b["digest"][7:] / "data").is_file():
                problems.append(f"blob {b['digest']}")
    return problems


def check_store(tmp_path: Path, seed: int) -> tuple[int, int]:
    """Runs the four checks on one generated store; (blobs, blobs the stock GC deletes)."""
    s, tags = generate(tmp_path / "store", seed)
    before = all_blobs(s.root)
    eligible = stock_dry_run(s.root)  # a dry run changes nothing
    assert eligible < before or not before, f"seed {seed}: the stock GC would delete everything"

    collected = copy(s, tmp_path / "janitor")
    janitor(collected, "gc")
    deleted = before - all_blobs(collected)
    assert deleted == eligible, (
        f"seed {seed}: janitor deleted {sorted(deleted - eligible)} the stock GC marks,"
        f" and kept {sorted(eligible - deleted)} the stock GC would delete"
    )
    assert stock_dry_run(collected) == set(), f"seed {seed}: the stock GC still finds garbage"

    graced = copy(s, tmp_path / "grace")
    janitor(graced, "gc", gc_grace="1h")
    young_kept = before - all_blobs(graced)
    assert young_kept == eligible & old_blobs(s.root, NOW - 3600), f"seed {seed}: grace"

    swept = copy(s, tmp_path / "sweep")
    keep = str(random.Random(seed).randint(0, 2))
    janitor(swept, "sweep", keep_last_n=keep)
    assert stock_dry_run(swept) == set(), f"seed {seed}: garbage left after the sweep"
    repos = swept / "docker" / "registry" / "v2" / "repositories"
    for repo in tags:
        tag_dir = repos / repo / "_manifests" / "tags"
        for tag in sorted(p.name for p in tag_dir.iterdir()) if tag_dir.is_dir() else []:
            assert complete(swept, repo, tag) == [], f"seed {seed}: {repo}:{tag} incomplete"
    return len(before), len(eligible)


def test_janitor_gc_deletes_exactly_what_the_registry_gc_would(tmp_path: Path) -> None:
    # Stores checked four at a time: most of the time is the registry's garbage-collect.
    seeds = [SEED * 1000 + n for n in range(STORES)]
    failures: list[str] = []
    sizes: list[tuple[int, int]] = []

    def one(seed: int) -> None:
        try:
            sizes.append(check_store(tmp_path / str(seed), seed))
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, seeds))
    print(f"{len(sizes)} stores, {sum(b for b, _ in sizes)} blobs, "
          f"{sum(e for _, e in sizes)} deleted by both")  # fmt: skip
    assert failures == [], f"{len(failures)} of {STORES} stores differ:\n" + "\n".join(failures)
    # The stores really exercise collection: most have garbage, none is all garbage.
    assert sum(1 for _, e in sizes if e) >= STORES // 2
