"""Builds OCI image layouts in Python, for skopeo to push: no image tooling needed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"

Descriptor = dict[str, Any]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_bytes(files: dict[str, bytes]) -> bytes:
    """A reproducible gzip'd tar: same files, same digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


class Layout:
    """An OCI layout directory; every blob written is a descriptor you can reuse."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.refs: list[Descriptor] = []

    def blob(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        digest = sha256(data)
        (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def layer(self, files: dict[str, bytes]) -> Descriptor:
        return self.blob(layer_bytes(files), OCI_LAYER)

    def image(
        self,
        layers: list[Descriptor],
        *,
        os_name: str = "linux",
        arch: str = "amd64",
        label: str = "",
    ) -> Descriptor:
        diff_ids = [sha256(gzip.decompress(self._read(d))) for d in layers]
        config = {
            "architecture": arch,
            "os": os_name,
            "config": {"Labels": {"test": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        cfg = self.blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cfg,
            "layers": layers,
        }
        return self.blob(
            json.dumps(manifest, sort_keys=True).encode(),
            OCI_MANIFEST,
            platform={"architecture": arch, "os": os_name},
        )

    def attestation(self, subject: Descriptor, label: str) -> Descriptor:
        """Like buildx's provenance attestation: platform unknown/unknown, in-toto layer."""
        statement = json.dumps(
            {"_type": "https://in-toto.io/Statement/v0.1", "subject": subject["digest"], "l": label}
        )
        layer = self.blob(statement.encode(), IN_TOTO)
        cfg = self.blob(
            json.dumps(
                {"architecture": "unknown", "os": "unknown", "s": subject["digest"]}
            ).encode(),
            OCI_CONFIG,
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cfg,
            "layers": [layer],
        }
        return self.blob(
            json.dumps(manifest, sort_keys=True).encode(),
            OCI_MANIFEST,
            platform={"architecture": "unknown", "os": "unknown"},
            annotations={
                "vnd.docker.reference.digest": subject["digest"],
                "vnd.docker.reference.type": "attestation-manifest",
            },
        )

    def index(self, manifests: list[Descriptor]) -> Descriptor:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(doc, sort_keys=True).encode(), OCI_INDEX)

    def tag(self, name: str, desc: Descriptor) -> None:
        self.refs = [
            r for r in self.refs if r["annotations"]["org.opencontainers.image.ref.name"] != name
        ]
        plain = {k: desc[k] for k in ("mediaType", "digest", "size")}
        self.refs.append({**plain, "annotations": {"org.opencontainers.image.ref.name": name}})
        index = {"schemaVersion": 2, "manifests": self.refs}
        (self.path / "index.json").write_text(json.dumps(index))

    def _read(self, desc: Descriptor) -> bytes:
        return (
            self.path / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
        ).read_bytes()


def children(layout: Layout, desc: Descriptor) -> list[Descriptor]:
    doc = json.loads(layout._read(desc))
    return list(doc.get("manifests", []))


def blobs_of(layout: Layout, desc: Descriptor) -> set[str]:
    """Every blob digest an image or index needs, itself included."""
    doc = json.loads(layout._read(desc))
    out = {desc["digest"]}
    for child in doc.get("manifests", []):
        out |= blobs_of(layout, child)
    if "config" in doc:
        out.add(doc["config"]["digest"])
    out |= {layer["digest"] for layer in doc.get("layers", [])}
    return out
