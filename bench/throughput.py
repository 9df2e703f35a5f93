#!/usr/bin/env python3
"""Push/pull throughput of one large image through a deployed registry, against a plain
file copy of the same bytes on the same disk.

  python3 bench/throughput.py [--size-mib 1024] [--registry 127.0.0.1:5000]

Builds an OCI layout holding one uncompressed layer of random bytes (so no compression
time is measured), pushes it with skopeo, pulls it back into a new layout, and copies the
layer file with cp. Prints MiB/s for each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHUNK = 8 << 20


def write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def make_layout(root: Path, size: int) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = blobs / "layer.tmp"
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(CHUNK, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    layer = h.hexdigest()
    tmp.rename(blobs / layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
        }
    ).encode()
    cfg_digest, cfg_size = write_blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cfg_digest,
                "size": cfg_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer}",
                    "size": size,
                }
            ],
        }
    ).encode()
    m_digest, m_size = write_blob(blobs, manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": m_digest,
                        "size": m_size,
                        "annotations": {"org.opencontainers.image.ref.name": "big"},
                    }
                ],
            }
        )
    )
    return blobs / layer


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        layer = make_layout(work / "src", size)
        subprocess.run(["sync"], check=True)
        ref = f"docker://{args.registry}/bench/throughput:{int(time.time())}"
        tls = "--dest-tls-verify=false"
        push = timed(
            [
                "skopeo",
                "copy",
                "-q",
                "--preserve-digests",
                tls,
                "oci:" + str(work / "src") + ":big",
                ref,
            ]
        )
        pull = timed(
            [
                "skopeo",
                "copy",
                "-q",
                "--preserve-digests",
                "--src-tls-verify=false",
                ref,
                "oci:" + str(work / "dst") + ":big",
            ]
        )
        copy = timed(["cp", str(layer), str(work / "copy")])
        subprocess.run(["sync"], check=True)
        pulled = work / "dst" / "blobs" / "sha256" / layer.name
        assert pulled.stat().st_size == size, "pulled layer has the wrong size"
        mib = size / (1 << 20)
        print("| operation | seconds | MiB/s |\n| --- | ---: | ---: |")
        for name, secs in (
            ("push (skopeo)", push),
            ("pull (skopeo)", pull),
            ("cp, same disk", copy),
        ):
            print(f"| {name} | {secs:.1f} | {mib / secs:.0f} |")
        shutil.rmtree(work / "dst")


if __name__ == "__main__":
    main()
