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
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import janitor
import oci
import pytest
from registry import REGISTRY_BIN, Registry, pull, push, running
from registry_janitor import gc, registry_gc
from smbshare import SmbDir, SmbSession

pytestmark = pytest.mark.usefixtures("registry_tools")

OLD = time.time() - 30 * 86400
ARGS = ["--keep-last-n", "1", "--gc-settle", "1"]


@dataclass(frozen=True)
class Template:
    """The store pushed once to the share (server-side path), copied for each test."""

    server_path: Path
    layout: oci.Layout
    images: dict[str, oci.Descriptor]


@pytest.fixture(scope="module")
def template(smb_session: SmbSession, tmp_path_factory: pytest.TempPathFactory) -> Template:
    """app:v1..v3 (a shared base, a layer each) and multi:m1, m2 (indexes with attestations);
    KEEP_LAST_N=1 keeps app:v3 and multi:m2. Pushed through the registry onto the share."""
    share = smb_session.fresh_dir("storagebox", "gc-template")
    work = tmp_path_factory.mktemp("smb-gc")
    layout = oci.Layout(work / "layout")
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
    with running(work / "registry", root=share.path / "registry") as reg:
        for ref, desc in images.items():
            name = ref.replace(":", "-")
            layout.tag(name, desc)
            push(layout.path, name, reg, ref, multi=ref.startswith("multi"))
    share.sync()
    # Aged on the server (behind the client's caches): every push 30 days ago, in push order.
    root = share.server_path / "registry" / "docker" / "registry" / "v2"
    for path in [*root.glob("repositories/**/link"), *root.glob("blobs/sha256/*/*/data")]:
        os.utime(path, (OLD, OLD))
    for n, ref in enumerate(images):
        repo, tag = ref.split(":")
        link = root / "repositories" / repo / "_manifests" / "tags" / tag / "current" / "link"
        os.utime(link, (OLD + n, OLD + n))
    return Template(share.server_path / "registry", layout, images)


def build(share: SmbDir, template: Template, tmp_path: Path) -> Registry:
    """A registry serving a copy of the template from this test's directory on the share
    (copied on the server, so no push is repeated)."""
    shutil.copytree(template.server_path, share.server_path / "registry", symlinks=True)
    deadline = time.monotonic() + 30
    while not (share.path / "registry" / "docker").is_dir():  # the client's cache expires
        assert time.monotonic() < deadline, "the copy never showed through the mount"
        time.sleep(0.2)
    reg = Registry(tmp_path / "registry", root=share.path / "registry")
    reg.start()
    return reg


def stock_gc_would_delete(reg: Registry) -> set[str]:
    result = registry_gc.run(REGISTRY_BIN or "registry", reg.config, dry_run=True)
    assert result.ok, result.output_tail
    return set(result.deleted)


def test_sweep_with_gc_on_the_share(smb_share: SmbDir, template: Template, tmp_path: Path) -> None:
    reg = build(smb_share, template, tmp_path)
    layout, images = template.layout, template.images
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
    smb_share: SmbDir, template: Template, tmp_path: Path, phase: str
) -> None:
    reg = build(smb_share, template, tmp_path)
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
