"""`verify` against a real registry process: blobs damaged on disk on purpose, found, moved
out of the registry's tree, reported with the tags they break, and healed by pushing the
images again (skopeo), after which they pull completely. The first two run on both store
backends (a directory, and a bucket on the session's RADOS Gateway).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import janitor
import oci
from registry import Registry, blob_data, pull, push, running
from registry_janitor import metrics
from registry_janitor.quarantine import QUARANTINE_DIR
from stores import BLOBS, Store

OLD = time.time() - 30 * 86400


def stored_blobs(reg: Registry) -> dict[str, int]:
    """Every blob's data in the store -> its size."""
    return {p: f.size for p, f in reg.store.files(BLOBS).items() if p.endswith("/data")}


def build(layout: oci.Layout) -> dict[str, oci.Descriptor]:
    """app:v1, app:v2 (a shared base), multi:m1 (two platforms with attestations), clean:c1."""
    base = layout.layer({"etc/os-release": b"ID=verify\n"})
    images = {
        "app:v1": layout.image([base, layout.layer({"v1": os.urandom(30_000)})], label="v1"),
        "app:v2": layout.image([base, layout.layer({"v2": os.urandom(30_000)})], label="v2"),
        "clean:c1": layout.image([layout.layer({"c": b"clean"})], label="c1"),
    }
    plats = [
        layout.image([base, layout.layer({a: os.urandom(20_000)})], arch=a, label=a)
        for a in ("amd64", "arm64")
    ]
    images["multi:m1"] = layout.index(
        [*plats, *(layout.attestation(p, f"m1-{i}") for i, p in enumerate(plats))]
    )
    for ref, desc in images.items():
        layout.tag(ref.replace(":", "-"), desc)
    return images


def push_all(reg: Registry, layout: oci.Layout, refs: list[str]) -> None:
    for ref in refs:
        push(layout.path, ref.replace(":", "-"), reg, ref, multi=ref.startswith("multi"))


def pull_ref(reg: Registry, ref: str, dest: Path) -> Any:
    dest.mkdir(parents=True, exist_ok=True)
    result = pull(reg, ref, dest / ref.replace(":", "-"), multi=ref.startswith("multi"))
    print(ref, result.stderr)
    return result


def events(result: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in janitor.events(result) if e["event"] == kind]


def verify(reg: Registry, *args: str) -> Any:
    return janitor.run(reg, "--json", *args, command="verify")


def test_a_clean_store_has_no_findings(
    tmp_path: Path, new_store: Callable[[str], Store | None]
) -> None:
    layout = oci.Layout(tmp_path / "layout")
    images = build(layout)
    with running(tmp_path / "registry", store=new_store("verify-clean")) as reg:
        push_all(reg, layout, list(images))
        prom = tmp_path / "registry_janitor.prom"
        result = verify(reg, "--metrics-file", str(prom))
        assert result.returncode == 0, result.stderr + result.stdout
        [summary] = events(result, "summary")
        stored = stored_blobs(reg)
        assert summary["blobs_verified"] == len(stored) > 10
        assert summary["bytes_verified"] == sum(stored.values())
        assert summary["corrupt"] == [] and summary["broken_tags"] == []
        assert not reg.store.listdir(QUARANTINE_DIR)
        values = metrics.read_previous(metrics.verify_file(prom))
        assert values[metrics.P + "blobs_verified_total"] == len(stored)
        assert values[metrics.P + "verify_last_run_success"] == 1


def test_damaged_blobs_are_quarantined_named_and_healed_by_a_push(
    tmp_path: Path, new_store: Callable[[str], Store | None]
) -> None:
    layout = oci.Layout(tmp_path / "layout")
    images = build(layout)

    def doc(desc: oci.Descriptor) -> dict[str, Any]:
        raw = (layout.path / "blobs" / "sha256" / desc["digest"][7:]).read_bytes()
        return dict(json.loads(raw))

    layer_v1 = doc(images["app:v1"])["layers"][1]["digest"]  # only app:v1 has it
    config_v2 = doc(images["app:v2"])["config"]["digest"]  # only app:v2
    arm64 = doc(images["multi:m1"])["manifests"][1]["digest"]  # a platform manifest of m1
    damage = {
        layer_v1: lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:],  # a byte flipped
        config_v2: lambda b: b[: len(b) // 2],  # truncated
        arm64: lambda b: b"",  # emptied
    }
    expected = {layer_v1: ["app:v1"], config_v2: ["app:v2"], arm64: ["multi:m1"]}

    with running(tmp_path / "registry", store=new_store("verify-damaged")) as reg:
        push_all(reg, layout, list(images))
        reg.age_blobs(OLD)
        reg.age_revisions(OLD)
        for digest, change in damage.items():
            reg.store.write(blob_data(digest), change(reg.store.read(blob_data(digest))))

        # As stored, the damage shows only at the client's digest check.
        bad = pull_ref(reg, "app:v1", tmp_path / "pull0")
        assert bad.returncode != 0 and "digest" in bad.stderr.lower(), bad.stderr

        found = verify(reg)
        assert found.returncode == 1, found.stderr
        corrupt = {e["digest"]: e["tags"] for e in events(found, "blob_corrupt")}
        assert corrupt == expected
        for digest in damage:
            assert not reg.store.is_file(blob_data(digest))
            [entry] = [e for e in reg.store.listdir(QUARANTINE_DIR) if e.startswith(digest[7:])]
            report = json.loads(reg.store.read(f"{QUARANTINE_DIR}/{entry}/report.json"))
            assert list(report["tags"]) == expected[digest]
            assert reg.store.is_file(f"{QUARANTINE_DIR}/{entry}/data")
        [summary] = events(found, "summary")
        assert sorted(summary["broken_tags"]) == ["app:v1", "app:v2", "multi:m1"]

        # The broken images now fail cleanly: the registry no longer has the blob.
        for ref, said in (("app:v1", "404 (Not Found)"), ("multi:m1", "manifest unknown")):
            failed = pull_ref(reg, ref, tmp_path / "pull1")
            assert failed.returncode != 0 and said in failed.stderr, failed.stderr
        assert pull_ref(reg, "clean:c1", tmp_path / "pull1").returncode == 0

        # Garbage collection deletes nothing while a linked manifest is quarantined, and
        # says what to do.
        swept = janitor.run(reg, "--json", "--gc-grace", "1h")
        assert swept.returncode == 1
        [refused] = events(swept, "gc_refused")
        assert arm64 in refused["message"] and "push that image again" in refused["message"]

        # Pushing the images again uploads what was moved away (the registry no longer says
        # "already exists"): everything pulls, and the next verify hashes the new copies.
        push_all(reg, layout, ["app:v1", "app:v2", "multi:m1"])
        for ref in images:
            assert pull_ref(reg, ref, tmp_path / "pull2").returncode == 0, ref
        healed = verify(reg)
        assert healed.returncode == 0, healed.stdout
        [summary] = events(healed, "summary")
        assert summary["blobs_verified"] == 3 and summary["quarantined"] == 3
        assert janitor.run(reg, "--json", "--gc-grace", "1h").returncode == 0


def test_a_byte_budget_spreads_a_pass_over_runs(tmp_path: Path) -> None:
    """(The time budget is tested on a synthetic store: tests/unit/test_verify.py.)"""
    layout = oci.Layout(tmp_path / "layout")
    images = build(layout)
    with running(tmp_path / "registry") as reg:
        push_all(reg, layout, list(images))
        total = len(list(reg.blobs.glob("sha256/*/*/data")))
        runs = []
        while True:
            result = janitor.run(reg, "--json", "--verify-budget", "20KB", command="verify")
            assert result.returncode == 0, result.stderr
            [summary] = events(result, "summary")
            runs.append(summary)
            if not summary["unverified"]:
                break
            assert summary["limit"] == "bytes" and summary["bytes_verified"] >= 20_000
            assert len(runs) < 20
        assert len(runs) > 2 and sum(r["blobs_verified"] for r in runs) == total
