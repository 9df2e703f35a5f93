"""Cheap correctness check of a store after a sweep or the plain recipe.

A kept tag is intact when its manifest blob and revision link exist and, recursively for an
index, every child's blob and revision link exist and every config and layer blob of every
image manifest exists: what a client needs to pull every platform.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from store import V2, StoreSpec, iter_repositories, repo_name, tag_mtime


@dataclass
class CheckResult:
    tags_expected: int = 0  # newest N per repository, by construction
    tags_present: int = 0
    retention_mismatch: int = 0  # repositories whose remaining tags are not the newest N
    broken_tags: int = 0  # kept tags that cannot be pulled completely
    blobs: int = 0
    revisions: int = 0


def _blob(root: Path, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return root / V2 / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def _intact(root: Path, repo: Path, digest: str, depth: int = 0) -> bool:
    hexd = digest.removeprefix("sha256:")
    if not (repo / "_manifests" / "revisions" / "sha256" / hexd / "link").exists():
        return False
    try:
        doc = json.loads(_blob(root, digest).read_bytes())
    except (OSError, ValueError):
        return False
    if "manifests" in doc:
        return depth < 4 and all(
            _intact(root, repo, m["digest"], depth + 1) for m in doc["manifests"]
        )
    refs = [doc["config"]["digest"], *(layer["digest"] for layer in doc.get("layers", []))]
    return all(_blob(root, d).exists() for d in refs)


def expected_kept(spec: StoreSpec, r: int, keep: int) -> set[str]:
    order = sorted(range(spec.tags), key=lambda t: -tag_mtime(r, t, spec.tags))
    return {f"v{t:05d}" for t in order[:keep]}


def check_store(root: Path, spec: StoreSpec, keep: int) -> CheckResult:
    res = CheckResult()
    repos_dir = root / V2 / "repositories"
    for r in range(spec.repos):
        repo = repos_dir / repo_name(r)
        expected = expected_kept(spec, r, keep)
        res.tags_expected += len(expected)
        try:
            present = set(os.listdir(repo / "_manifests" / "tags"))
        except FileNotFoundError:
            present = set()
        res.tags_present += len(present)
        if present != expected:
            res.retention_mismatch += 1
        for tag in present:
            try:
                digest = (repo / "_manifests" / "tags" / tag / "current" / "link").read_text()
            except OSError:
                res.broken_tags += 1
                continue
            if not _intact(root, repo, digest.strip()):
                res.broken_tags += 1
        try:
            res.revisions += len(os.listdir(repo / "_manifests" / "revisions" / "sha256"))
        except FileNotFoundError:
            pass
    blobs = root / V2 / "blobs" / "sha256"
    for prefix in os.listdir(blobs):
        res.blobs += len(os.listdir(blobs / prefix))
    return res


def blob_set(root: Path) -> set[str]:
    """Hex digests of every blob directory in the store."""
    blobs = root / V2 / "blobs" / "sha256"
    return {name for prefix in os.listdir(blobs) for name in os.listdir(blobs / prefix)}


def needed_blobs(root: Path) -> set[str]:
    """Hex digests of the blobs that the manifests linked as revisions reach (manifests,
    index children, configs, layers): exactly what a complete garbage collection keeps."""
    needed: set[str] = set()
    todo: list[str] = []
    for _name, repo in iter_repositories(root):
        try:
            todo += os.listdir(repo / "_manifests" / "revisions" / "sha256")
        except FileNotFoundError:
            pass
    while todo:
        hexd = todo.pop()
        if hexd in needed:
            continue
        needed.add(hexd)
        doc = json.loads(_blob(root, hexd).read_bytes())
        todo += [m["digest"].removeprefix("sha256:") for m in doc.get("manifests", [])]
        for d in [doc.get("config"), *doc.get("layers", [])]:
            if d:
                needed.add(d["digest"].removeprefix("sha256:"))
    return needed
