"""`verify` with the store on a real SMB share (Samba through an rclone mount).

The damage SMB shares are known for: a stored blob whose bytes do not match its digest. A
registry serves from the share, images pushed by skopeo; a layer is damaged through the
mount; `verify` finds it, moves it into the quarantine (a directory rename on the share) and
names the tag; a push of the image heals it, it pulls again, and the next `verify` hashes
the new copy and finds nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import janitor
import oci
import pytest
from registry import Registry, pull, push
from registry_janitor.quarantine import QUARANTINE_DIR
from smbshare import SmbDir

pytestmark = pytest.mark.usefixtures("registry_tools")


def test_verify_finds_quarantines_and_a_push_heals_on_the_share(
    smb_share: SmbDir, tmp_path: Path
) -> None:
    layout = oci.Layout(tmp_path / "layout")
    base = layout.layer({"etc/os-release": b"ID=smb-verify\n"})
    layer = layout.layer({"app.bin": os.urandom(200_000)})
    images = {
        "app:v1": layout.image([base, layer], label="v1"),
        "other:v1": layout.image([base, layout.layer({"o": os.urandom(10_000)})], label="o"),
    }
    reg = Registry(tmp_path / "registry", root=smb_share.path / "registry")
    reg.start()
    try:
        for ref, desc in images.items():
            layout.tag(ref.replace(":", "-"), desc)
            push(layout.path, ref.replace(":", "-"), reg, ref)
        h = layer["digest"].removeprefix("sha256:")
        data = reg.blobs / "sha256" / h[:2] / h / "data"
        damaged = bytearray(data.read_bytes())
        damaged[1000] ^= 0x01
        data.write_bytes(bytes(damaged))
        smb_share.sync()  # on the server, and no upload of rclone's meets the rename

        t0 = time.monotonic()
        found = janitor.run(reg, "--json", command="verify")
        print(f"verify on the share: {time.monotonic() - t0:.2f} s")
        assert found.returncode == 1, found.stdout + found.stderr
        events = janitor.events(found)
        assert [(e["digest"], e["tags"]) for e in events if e["event"] == "blob_corrupt"] == [
            (layer["digest"], ["app:v1"])
        ]
        assert not data.exists()

        push(layout.path, "app-v1", reg, "app:v1")
        for ref in images:
            pulled = pull(reg, ref, tmp_path / f"pulled-{ref.replace(':', '-')}")
            assert pulled.returncode == 0, pulled.stderr
        healed = janitor.run(reg, "--json", command="verify")
        assert healed.returncode == 0, healed.stdout + healed.stderr
        [summary] = [e for e in janitor.events(healed) if e["event"] == "summary"]
        assert summary["blobs_verified"] == 1 and summary["quarantined"] == 1
    finally:
        reg.stop()
    # What Samba stores: the damaged copy in the quarantine, the pushed one in the registry.
    smb_share.sync()
    server = smb_share.server_path / "registry"
    [entry] = (server / QUARANTINE_DIR).glob(f"{h}-*")
    assert (entry / "data").read_bytes() == bytes(damaged)
    report = json.loads((entry / "report.json").read_text())
    assert report["tags"] == {"app:v1": images["app:v1"]["digest"]}
    stored = (server / "docker/registry/v2/blobs/sha256" / h[:2] / h / "data").read_bytes()
    assert oci.sha256(stored) == layer["digest"]
