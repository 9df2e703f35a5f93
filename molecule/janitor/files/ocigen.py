"""Builds an OCI image layout for skopeo to push: run inside the test host (stdlib only).

    python3 ocigen.py '{"dir": "/var/tmp/x", "tag": "v1", "kind": "image", "shared": "base"}'

kind "image": one platform image with a shared layer (same bytes for the same "shared" name)
and a layer of random bytes. kind "index": an OCI index with linux/amd64 and linux/arm64
images (each with the shared layer and its own random layer) and, like `docker buildx`, one
attestation manifest per platform (platform unknown/unknown). Prints JSON: the top digest,
every blob with its size, and which blobs are random to this image ("unique").
"""

import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_gz(name, content):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


class Layout:
    def __init__(self, path):
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.blobs = {}
        self.unique = set()

    def blob(self, data, media_type, unique, **extra):
        digest = digest_of(data)
        (self.path / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        self.blobs[digest] = len(data)
        if unique:
            self.unique.add(digest)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def json_blob(self, doc, media_type, **extra):
        # Manifests and configs name random layers or a random salt: unique to this image.
        return self.blob(json.dumps(doc, sort_keys=True).encode(), media_type, True, **extra)

    def image(self, shared, size, arch, salt):
        layers = [
            (tar_gz("shared.bin", shared), False),
            (tar_gz("unique.bin", os.urandom(size)), True),
        ]
        descs = [self.blob(data, OCI_LAYER, unique) for data, unique in layers]
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"salt": salt}},
            "rootfs": {
                "type": "layers",
                "diff_ids": [digest_of(gzip.decompress(data)) for data, _ in layers],
            },
        }
        cfg = self.json_blob(config, OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": descs}
        return self.json_blob(
            manifest, OCI_MANIFEST, platform={"architecture": arch, "os": "linux"}
        )

    def attestation(self, subject, salt):
        statement = {"_type": "https://in-toto.io/Statement/v0.1", "subject": subject["digest"]}
        layer = self.blob(json.dumps(statement).encode(), IN_TOTO, True)
        cfg = self.json_blob({"architecture": "unknown", "os": "unknown", "salt": salt}, OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [layer]}
        return self.json_blob(
            manifest,
            OCI_MANIFEST,
            platform={"architecture": "unknown", "os": "unknown"},
            annotations={
                "vnd.docker.reference.digest": subject["digest"],
                "vnd.docker.reference.type": "attestation-manifest",
            },
        )

    def tag(self, name, desc):
        plain = {k: desc[k] for k in ("mediaType", "digest", "size")}
        ref = {**plain, "annotations": {"org.opencontainers.image.ref.name": name}}
        index = {"schemaVersion": 2, "manifests": [ref]}
        (self.path / "index.json").write_text(json.dumps(index))


def main():
    spec = json.loads(sys.argv[1])
    layout = Layout(spec["dir"])
    # Incompressible and the same for the same name: one shared layer blob across images.
    shared = random.Random(spec.get("shared", "shared")).randbytes(64 * 1024)
    size = int(spec.get("size", 256 * 1024))
    salt = os.urandom(8).hex()
    if spec.get("kind", "image") == "image":
        top = layout.image(shared, size, "amd64", salt)
        children = []
    else:
        images = [layout.image(shared, size, arch, salt) for arch in ("amd64", "arm64")]
        attestations = [layout.attestation(image, salt) for image in images]
        children = images + attestations
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        top = layout.json_blob(index, OCI_INDEX)
    layout.tag(spec["tag"], top)
    print(
        json.dumps(
            {
                "digest": top["digest"],
                "children": [c["digest"] for c in children],
                "attestations": [c["digest"] for c in children if c["platform"]["os"] == "unknown"],
                "blobs": layout.blobs,
                "unique": sorted(layout.unique),
            }
        )
    )


if __name__ == "__main__":
    main()
