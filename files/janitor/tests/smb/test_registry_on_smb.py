"""The registry with its storage on a real SMB share (Samba through an rclone mount).

Pushes and complete pulls (skopeo verifies every digest), then the blobs as Samba stored
them, hashed behind every client cache: content that does not match its digest is the
corruption reported upstream for SMB shares. Then two tags differing only in case, on the
Storage-Box-like share (case-insensitive) and on a case-sensitive one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import oci
import pytest
from registry import Registry, pull, push, running
from smbshare import SmbDir

pytestmark = pytest.mark.usefixtures("registry_tools")

ACCEPT = f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX}"


def served_digest(reg: Registry, repo: str, tag: str) -> str | None:
    """The digest the registry serves for repo:tag, or None when it says unknown."""
    req = urllib.request.Request(
        f"http://{reg.host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={"Accept": ACCEPT}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.headers["Docker-Content-Digest"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def server_blob_problems(share: SmbDir, digests: set[str]) -> list[str]:
    """Blobs missing or not matching their digest in Samba's own storage."""
    blobs = share.server_path / "registry" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    problems = []
    for digest in sorted(digests):
        hexpart = digest.removeprefix("sha256:")
        data = blobs / hexpart[:2] / hexpart / "data"
        if not data.is_file():
            problems.append(f"{digest}: missing on the server")
        elif hashlib.sha256(data.read_bytes()).hexdigest() != hexpart:
            problems.append(f"{digest}: content on the server does not match")
    return problems


def test_single_and_multi_arch_images_push_and_pull_completely(
    smb_share: SmbDir, tmp_path: Path
) -> None:
    layout = oci.Layout(tmp_path / "layout")
    base = layout.layer({"etc/os-release": b"ID=smb-test\n"})
    single = layout.image([base, layout.layer({"app.bin": os.urandom(300_000)})], label="one")
    platforms = [
        layout.image([base, layout.layer({f"{a}.bin": os.urandom(200_000)})], arch=a, label=a)
        for a in ("amd64", "arm64")
    ]
    index = layout.index(
        [*platforms, *(layout.attestation(p, f"prov-{i}") for i, p in enumerate(platforms))]
    )
    layout.tag("single", single)
    layout.tag("multi", index)

    with running(tmp_path / "registry", root=smb_share.path / "registry") as reg:
        t0 = time.monotonic()
        push(layout.path, "single", reg, "team/app:single")
        push(layout.path, "multi", reg, "team/app:multi", multi=True)
        pushed = time.monotonic() - t0
        for ref, desc, multi in (("single", single, False), ("multi", index, True)):
            assert served_digest(reg, "team/app", ref) == desc["digest"]
            t0 = time.monotonic()
            result = pull(reg, f"team/app:{ref}", tmp_path / f"pulled-{ref}", multi=multi)
            assert result.returncode == 0, result.stderr
            print(f"pull {ref}: {time.monotonic() - t0:.2f} s")
        print(f"push single + multi-arch index: {pushed:.2f} s")

        smb_share.sync()
        # Pulled again once the mount shows only what the server has.
        result = pull(reg, "team/app:multi", tmp_path / "pulled-again", multi=True)
        assert result.returncode == 0, result.stderr
    wanted = oci.blobs_of(layout, single) | oci.blobs_of(layout, index)
    assert server_blob_problems(smb_share, wanted) == []


def push_tags_differing_in_case(share: SmbDir, tmp_path: Path) -> dict[str, dict[str, str | None]]:
    """Pushes image `lower` as app:latest, then image `upper` as app:Latest, and returns
    what the registry serves for each tag: right after the pushes, once the client has
    written everything back, and through a fresh client (what the registry serves after a
    restart or once every cache has expired); and the tags on the server itself."""
    layout = oci.Layout(tmp_path / "layout")
    images = {
        tag: layout.image([layout.layer({f"{tag}.txt": tag.encode()})], label=tag)
        for tag in ("latest", "Latest")
    }
    for tag, desc in images.items():
        layout.tag(tag, desc)
    root = share.path / "registry"
    seen: dict[str, dict[str, str | None]] = {"pushed": {t: d["digest"] for t, d in images.items()}}
    with running(tmp_path / "registry", root=root) as reg:
        for i, tag in enumerate(images):
            if i:
                # Each push written back before the next: rclone (not the kernel's client,
                # which writes through) crashed uploading two files that fold to one name.
                share.sync()
            push(layout.path, tag, reg, f"app:{tag}")
        seen["served right after the pushes"] = {t: served_digest(reg, "app", t) for t in images}
        share.sync()
        seen["served once written back"] = {t: served_digest(reg, "app", t) for t in images}
    share.remount()
    with running(tmp_path / "registry-again", root=root) as reg:
        seen["served by a fresh client"] = {t: served_digest(reg, "app", t) for t in images}
        seen["tag list of a fresh client"] = {t: None for t in reg.tags("app")}
        seen["pulls by a fresh client"] = {
            t: str(pull(reg, f"app:{t}", tmp_path / f"pulled-{t}").returncode) for t in images
        }
    tags_dir = share.server_path / "registry/docker/registry/v2/repositories/app/_manifests/tags"
    seen["on the server (tags/<dir>/current/link)"] = {
        d.name: (d / "current" / "link").read_text() for d in sorted(tags_dir.iterdir())
    }
    print(json.dumps(seen, indent=2))
    return seen


def test_storagebox_share_folds_tags_differing_only_in_case(
    smb_share: SmbDir, tmp_path: Path
) -> None:
    seen = push_tags_differing_in_case(smb_share, tmp_path)
    pushed = seen["pushed"]
    # Samba keeps one directory for both names; its link is one of the two images.
    on_server = seen["on the server (tags/<dir>/current/link)"]
    assert len(on_server) == 1
    assert next(iter(on_server.values())) in pushed.values()
    # The hazard: the two tags do not both keep their own image, and one name is gone
    # from the tag list.
    assert seen["served by a fresh client"] != pushed
    assert len(seen["tag list of a fresh client"]) == 1


def test_case_sensitive_share_keeps_both_tags(
    smb_share_case_sensitive: SmbDir, tmp_path: Path
) -> None:
    seen = push_tags_differing_in_case(smb_share_case_sensitive, tmp_path)
    pushed = seen["pushed"]
    for view in (
        "served right after the pushes",
        "served once written back",
        "served by a fresh client",
        "on the server (tags/<dir>/current/link)",
    ):
        assert seen[view] == pushed, view
    assert sorted(seen["tag list of a fresh client"]) == ["Latest", "latest"]
    assert seen["pulls by a fresh client"] == {"latest": "0", "Latest": "0"}
