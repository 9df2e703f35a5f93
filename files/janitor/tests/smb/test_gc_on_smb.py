"""The janitor's sweep and garbage collection with the store on a real SMB share.

A registry serving from the Storage-Box-like share (Samba, case-insensitive, through an rclone
mount), images pushed by skopeo, then sweeps:
- a sweep exits 0 although SMB deletes a file only when its last handle closes (a trash
  entry that cannot be removed yet waits for the next run instead of failing the sweep);
- every kept tag pulls completely, the blobs only pruned images had are gone from the server,
  and the registry's own `garbage-collect --dry-run` finds nothing more to delete;
- SIGKILL at each phase boundary of the collection, then the next sweep: kept tags pull and
  nothing stays held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import janitor
import oci
import pytest
from registry import REGISTRY_BIN, Registry, pull, push
from registry_janitor import gc, registry_gc
from smbshare import SmbDir

pytestmark = pytest.mark.usefixtures("registry_tools")

OLD = time.time() - 30 * 86400
ARGS = ["--keep-last-n", "1", "--gc-settle", "1"]


def age_store(reg: Registry) -> None:
    """Every push 30 days ago (revisions, tags, blob data), except the newest tag's push time."""
    for path in [*reg.repositories.glob("**/link"), *reg.blobs.glob("sha256/*/*/data")]:
        os.utime(path, (OLD, OLD))


def build(share: SmbDir, tmp_path: Path) -> tuple[Registry, oci.Layout, dict[str, oci.Descriptor]]:
    """app:v1..v3 (a shared base, a layer each) and multi:m1, m2 (indexes with attestations);
    KEEP_LAST_N=1 keeps app:v3 and multi:m2."""
    layout = oci.Layout(tmp_path / "layout")
    base = layout.layer({"etc/os-release": b"ID=smb-gc\n"})
    images: dict[str, oci.Descriptor] = {}
    for i in range(1, 4):
        images[f"app:v{i}"] = layout.image(
            [base, layout.layer({f"v{i}.bin": os.urandom(20_000)})], label=f"v{i}"
        )
    for i in range(1, 3):
        plats = [
            layout.image([base, layout.layer({f"{a}{i}": os.urandom(10_000)})], arch=a, label=a)
            for a in ("amd64", "arm64")
        ]
        images[f"multi:m{i}"] = layout.index(
            [*plats, *(layout.attestation(p, f"m{i}-{j}") for j, p in enumerate(plats))]
        )
    reg = Registry(tmp_path / "registry", root=share.path / "registry")
    reg.start()
    for ref, desc in images.items():
        name = ref.replace(":", "-")
        layout.tag(name, desc)
        push(layout.path, name, reg, ref, multi=ref.startswith("multi"))
    age_store(reg)
    for n, ref in enumerate(images):  # push order = age order
        repo, tag = ref.split(":")
        link = reg.repositories / repo / "_manifests" / "tags" / tag / "current" / "link"
        os.utime(link, (OLD + n, OLD + n))
    share.sync()
    return reg, layout, images


def stock_gc_would_delete(reg: Registry) -> set[str]:
    result = registry_gc.run(REGISTRY_BIN or "registry", reg.config, dry_run=True)
    assert result.ok, result.output_tail
    return set(result.deleted)


def test_sweep_with_gc_on_the_share(smb_share: SmbDir, tmp_path: Path) -> None:
    reg, layout, images = build(smb_share, tmp_path)
    try:
        kept = {"app:v3": images["app:v3"], "multi:m2": images["multi:m2"]}
        gone = set().union(
            *(oci.blobs_of(layout, d) for r, d in images.items() if r not in kept)
        ) - set().union(*(oci.blobs_of(layout, d) for d in kept.values()))
        t0 = time.monotonic()
        first = janitor.run(reg, *ARGS)
        print(f"sweep on the share: {time.monotonic() - t0:.2f} s\n{first.stderr[-1500:]}")
        assert first.returncode == 0, first.stderr
        smb_share.sync()
        for ref in kept:
            result = pull(reg, ref, tmp_path / f"pulled-{ref}", multi=ref.startswith("multi"))
            assert result.returncode == 0, result.stderr
        assert not any(reg.blob_exists(d) for d in gone)
        assert stock_gc_would_delete(reg) == set()
        second = janitor.run(reg, *ARGS)
        assert second.returncode == 0, second.stderr
        assert "0 deleted, 0 manifests unlinked" in second.stderr
        smb_share.sync()
    finally:
        reg.stop()
    blobs = smb_share.server_path / "registry" / "docker" / "registry" / "v2" / "blobs"
    on_server = {f"sha256:{p.name}" for p in blobs.glob("sha256/*/*")}
    assert not (gone & on_server), "deleted blobs are still on the server"
    assert not list((smb_share.server_path / "registry" / ".registry-janitor-held").glob("*/*"))


# Where something is held: right after holding, after the settle and re-check, mid-delete.
@pytest.mark.parametrize("phase", ["hold", "restore", "delete"])
def test_sigkill_at_each_collection_phase_then_next_sweep(
    smb_share: SmbDir, tmp_path: Path, phase: str
) -> None:
    reg, _, _ = build(smb_share, tmp_path)
    try:
        pauses = tmp_path / "pauses"
        pauses.mkdir()
        for other in gc.PHASES:
            if other != phase:
                (pauses / f"{other}.go").touch()
        env = {
            k: v for k, v in os.environ.items() if k not in janitor._OURS
        } | janitor.TEST_DEFAULTS
        env[gc.PAUSE_DIR_ENV] = str(pauses)
        cmd = [
            sys.executable, "-m", "registry_janitor", "sweep", "--run-once",
            "--data-dir", str(reg.root), *ARGS,
        ]  # fmt: skip
        with subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        ) as proc:
            deadline = time.monotonic() + 120
            while not (pauses / f"{phase}.reached").exists():
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, f"never reached {phase}"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        for ref in ("app:v3", "multi:m2"):  # kept images are never held
            result = pull(reg, ref, tmp_path / f"crashed-{ref}", multi=ref.startswith("multi"))
            assert result.returncode == 0, result.stderr
        again = janitor.run(reg, *ARGS)
        assert again.returncode == 0, again.stderr
        smb_share.sync()
        for ref in ("app:v3", "multi:m2"):
            result = pull(reg, ref, tmp_path / f"pulled-{ref}", multi=ref.startswith("multi"))
            assert result.returncode == 0, result.stderr
        assert stock_gc_would_delete(reg) == set()
        assert not list((reg.root / ".registry-janitor-held").glob("*/*"))
    finally:
        reg.stop()
