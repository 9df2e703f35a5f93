"""What real clients push, laid out as each client does, through the registry's HTTP API.

Each builder pushes one layout and cites the client source it follows (`*_SOURCE`). Where a
real client is installed here (skopeo: zstd layers; the `oras` Python SDK: artifacts and
referrers), the builder runs it instead. Debian's skopeo cannot sign with sigstore ("Debian-
local change: sigstore disabled"), so cosign's layouts are built from cosign's source.

A builder takes a generation: the tests push generation 0, then generation 1 to the same
tags, so that each layout leaves garbage behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import oci
from registry import Registry, skopeo

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
MANIFEST_TYPES = {OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST}
ACCEPT = ", ".join(sorted(MANIFEST_TYPES))
EMPTY_JSON = b"{}"

Descriptor = dict[str, Any]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_gz(files: dict[str, bytes]) -> bytes:
    return oci.layer_bytes(files)


class Api:
    """The registry's HTTP API (distribution-spec spec.md: push, pull, delete)."""

    def __init__(self, registry: Registry) -> None:
        self.base = f"http://{registry.host}/v2"
        self.uploaded: set[str] = set()  # every digest pushed through this client

    def _request(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def blob(self, repo: str, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        """Monolithic upload: POST, then PUT with the digest."""
        digest = sha256(data)
        status, body, headers = self._request("POST", f"{self.base}/{repo}/blobs/uploads/", b"")
        assert status == 202, (status, body)
        location = headers["Location"]
        if location.startswith("/"):
            location = self.base.removesuffix("/v2") + location
        sep = "&" if "?" in location else "?"
        status, body, _ = self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 201, (status, body)
        self.uploaded.add(digest)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def manifest(self, repo: str, ref: str | None, doc: dict[str, Any], **extra: Any) -> Descriptor:
        """PUT a manifest by tag (or by its digest when `ref` is None); its descriptor."""
        raw = json.dumps(doc, indent=3).encode()
        digest = sha256(raw)
        media_type = doc.get("mediaType") or OCI_MANIFEST
        status, body, _ = self._request(
            "PUT",
            f"{self.base}/{repo}/manifests/{ref or digest}",
            raw,
            {"Content-Type": media_type},
        )
        assert status == 201, (repo, ref, status, body)
        self.uploaded.add(digest)
        return {"mediaType": media_type, "digest": digest, "size": len(raw), **extra}

    def delete_manifest(self, repo: str, digest: str) -> None:
        status, body, _ = self._request("DELETE", f"{self.base}/{repo}/manifests/{digest}")
        assert status == 202, (repo, digest, status, body)

    def get_manifest(self, repo: str, ref: str) -> tuple[int, bytes]:
        status, body, _ = self._request(
            "GET", f"{self.base}/{repo}/manifests/{ref}", headers={"Accept": ACCEPT}
        )
        return status, body

    def blob_status(self, repo: str, digest: str) -> int:
        status, _, _ = self._request("HEAD", f"{self.base}/{repo}/blobs/{digest}")
        return status

    def missing(self, repo: str, tag: str) -> list[str]:
        """What the registry cannot serve of a tag: every manifest reachable from it by GET
        (index entries of a manifest type, or of another type if they GET as one), every
        other blob it names by HEAD. Foreign
        layers (`urls`) are fetched from their URLs by clients, never from the registry."""
        problems: list[str] = []
        todo = [tag]
        seen: set[str] = set()
        while todo:
            ref = todo.pop()
            if ref in seen:
                continue
            seen.add(ref)
            status, body = self.get_manifest(repo, ref)
            if status != 200:
                problems.append(f"manifest {ref}: {status}")
                continue
            doc = json.loads(body)
            blobs = [doc.get("config"), *doc.get("layers", [])]
            for entry in doc.get("manifests", []):
                if entry.get("mediaType") in MANIFEST_TYPES:
                    todo.append(entry["digest"])
                elif self.get_manifest(repo, entry["digest"])[0] == 200:
                    todo.append(entry["digest"])  # an unknown type that is a manifest
                else:
                    blobs.append(entry)
            for b in blobs:
                if b and not b.get("urls") and self.blob_status(repo, b["digest"]) != 200:
                    problems.append(f"blob {b['digest']} ({b.get('mediaType')})")
        return problems


def image(
    api: Api, repo: str, label: str, *, layer_type: str = OCI_LAYER, tag: str | None = None
) -> Descriptor:
    """A plain single-platform image: config and two layers (pushed by digest, or by tag)."""
    layers = [
        api.blob(repo, tar_gz({"base": b"base layer"}), layer_type),
        api.blob(repo, tar_gz({label: os.urandom(64)}), layer_type),
    ]
    config = api.blob(
        repo,
        json.dumps({"architecture": "amd64", "os": "linux", "label": label}).encode(),
        OCI_CONFIG,
    )
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    return api.manifest(repo, tag, doc, platform={"architecture": "amd64", "os": "linux"})


# -- BuildKit registry cache ---------------------------------------------------------------
BUILDKIT_SOURCE = "moby/buildkit cache/remotecache/export.go, v1/types/spec.go"


def buildkit_cache(
    api: Api, repo: str, gen: int, *, image_manifest: bool, mode: str, oci_types: bool
) -> Descriptor:
    """`--cache-to type=registry,ref=…,mode=<mode>,image-manifest=<…>`: Finalize() pushes the
    layer blobs, then the cache config (CacheConfigMediaTypeV0), then either an index whose
    entries are the layers and the config (AddCacheBlob, SetConfig: image-manifest=false,
    the default; a Docker manifest list with oci-mediatypes=false) or an OCI image manifest
    with the layers as layers and the cache config as config (image-manifest=true). mode=max
    also exports the intermediate stages' layers, not only the final image's."""
    count = 2 if mode == "min" else 5
    layer_type = OCI_LAYER if oci_types else DOCKER_LAYER
    layers = [
        api.blob(
            repo,
            tar_gz({f"step{i}": f"{mode} {gen} {i} {os.urandom(8).hex()}".encode()}),
            layer_type,
            annotations={
                "buildkit/createdat": "2026-12-01T00:00:00Z",
                "containerd.io/uncompressed": sha256(f"u{i}".encode()),
            },
        )
        for i in range(count)
    ]
    config = json.dumps(
        {
            "layers": [{"blob": d["digest"], "parent": i - 1} for i, d in enumerate(layers)],
            "records": [
                {"digest": sha256(f"rec{gen}{i}".encode()), "layers": [{"layer": i}]}
                for i in range(count)
            ],
        }
    ).encode()
    cfg = api.blob(repo, config, CACHE_CONFIG)
    if image_manifest:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cfg,
            "layers": layers,
        }
    else:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX if oci_types else DOCKER_LIST,
            "manifests": [*layers, cfg],
        }
    return api.manifest(repo, "buildcache", doc)


# -- cosign tag scheme ---------------------------------------------------------------------
COSIGN_SOURCE = "sigstore/cosign pkg/oci/remote/remote.go (suffixTag), pkg/types/media.go"


def cosign_tag(digest: str, suffix: str) -> str:
    """remote.go suffixTag/normalizeWithSeparator: `sha256-<hex>.<sig|att|sbom>`."""
    return digest.replace(":", "-") + "." + suffix


def cosign_attachment(api: Api, repo: str, subject: str, suffix: str, gen: int) -> Descriptor:
    """What cosign sign / attest / attach sbom push: an OCI image manifest with an OCI config
    and one layer per signature or attachment (the simple-signing payload for .sig, a DSSE
    envelope for .att, the SBOM document for .sbom), under the subject's suffix tag."""
    if suffix == "sig":  # pkg/oci/static/options.go: SimpleSigningMediaType, OCI config
        payload = json.dumps(
            {
                "critical": {
                    "image": {"docker-manifest-digest": subject},
                    "type": "cosign container image signature",
                }
            }
        ).encode()
        layer = api.blob(
            repo,
            payload,
            "application/vnd.dev.cosign.simplesigning.v1+json",
            annotations={"dev.cosignproject.cosign/signature": f"MEU{gen}"},
        )
    elif suffix == "att":
        payload = json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                              "signatures": [{"sig": f"{gen}"}]}).encode()  # fmt: skip
        layer = api.blob(
            repo,
            payload,
            "application/vnd.dsse.envelope.v1+json",
            annotations={"predicateType": "https://slsa.dev/provenance/v1"},
        )
    else:
        payload = json.dumps({"spdxVersion": "SPDX-2.3", "name": f"sbom {gen}"}).encode()
        layer = api.blob(repo, payload, "text/spdx+json")  # fmt: skip
    config = api.blob(
        repo,
        json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers",
                    "diff_ids": [layer["digest"]]}}).encode(),
        OCI_CONFIG,
    )  # fmt: skip
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    return api.manifest(repo, cosign_tag(subject, suffix), doc)


# -- OCI 1.1 referrers ---------------------------------------------------------------------
REFERRERS_SOURCE = (
    "opencontainers/image-spec manifest.md (subject, artifactType, empty descriptor);"
    " distribution-spec spec.md (Referrers Tag Schema)"
)


def referrer(api: Api, repo: str, subject: Descriptor, artifact_type: str, gen: int) -> Descriptor:
    """An artifact about `subject`: artifactType set, the empty config (required with it),
    one layer; pushed by digest (untagged), as oras attach and cosign with
    --registry-referrers-mode=oci-1-1 do."""
    empty = api.blob(repo, EMPTY_JSON, OCI_EMPTY)
    layer = api.blob(repo, f"signature {gen} {os.urandom(8).hex()}".encode(),
                     "application/vnd.dev.cosign.simplesigning.v1+json")  # fmt: skip
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {**empty, "data": "e30="},
        "layers": [layer],
        "subject": {k: subject[k] for k in ("mediaType", "digest", "size")},
        "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
    }
    return api.manifest(repo, None, doc, artifactType=artifact_type)


def referrers_tag(api: Api, repo: str, subject: str, referrers: list[Descriptor]) -> str:
    """The fallback a client keeps when the registry has no referrers API (Distribution 2.8):
    an image index of the referrers' descriptors under tag `sha256-<hex>`."""
    tag = subject.replace(":", "-")
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": referrers}
    api.manifest(repo, tag, doc)
    return tag


# -- Helm ------------------------------------------------------------------------------------
HELM_SOURCE = "helm/helm pkg/registry/client.go (Push), pkg/registry/constants.go"


def helm_chart(api: Api, repo: str, version: str, gen: int) -> Descriptor:
    """`helm push chart-<version>.tgz oci://…`: config = Chart.yaml as JSON (ConfigMediaType),
    the chart archive (ChartLayerMediaType) and, when signed, the provenance file; tag = the
    chart version."""
    chart = tar_gz({"demo/Chart.yaml": f"name: demo\nversion: {version}\n# {gen}\n".encode()})
    layers = [
        api.blob(repo, chart, "application/vnd.cncf.helm.chart.content.v1.tar+gzip"),
        api.blob(repo, f"-----BEGIN PGP SIGNED MESSAGE----- {gen}".encode(),
                 "application/vnd.cncf.helm.chart.provenance.v1.prov"),
    ]  # fmt: skip
    config = api.blob(
        repo,
        json.dumps({"name": "demo", "version": version, "apiVersion": "v2"}).encode(),
        "application/vnd.cncf.helm.config.v1+json",
    )
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": {"org.opencontainers.image.title": "demo",
                        "org.opencontainers.image.version": version},
    }  # fmt: skip
    return api.manifest(repo, version, doc)


# -- Windows foreign layers ------------------------------------------------------------------
WINDOWS_SOURCE = (
    "distribution v2.8.3 manifest/schema2/manifest.go (MediaTypeForeignLayer),"
    " registry/storage/schema2manifesthandler.go (urls: blob not required)"
)


def windows_image(api: Api, repo: str, gen: int) -> tuple[Descriptor, str]:
    """A Windows image: the base layer is foreign (its `urls` point at Microsoft's registry;
    docker push never uploads it), the app layer is an ordinary one. Returns the image in a
    manifest list (platform windows/amd64 with os.version) and the foreign layer's digest."""
    foreign_bytes = f"windows base layer never uploaded {gen // 2}".encode()  # shared by gens
    foreign = {
        "mediaType": DOCKER_FOREIGN,
        "digest": sha256(foreign_bytes),
        "size": 1_234_567_890,
        "urls": [f"https://mcr.microsoft.com/v2/windows/servercore/blobs/{sha256(foreign_bytes)}"],
    }
    app = api.blob(repo, tar_gz({"app.exe": os.urandom(64)}), DOCKER_LAYER)
    config = api.blob(
        repo,
        json.dumps({"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2113",
                    "rootfs": {"type": "layers", "diff_ids": [sha256(b"a"), sha256(b"b")]}}
                   ).encode(),
        DOCKER_CONFIG,
    )  # fmt: skip
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config,
        "layers": [foreign, app],
    }
    manifest = api.manifest(repo, None, doc, platform={"architecture": "amd64", "os": "windows",
                                                      "os.version": "10.0.20348.2113"})  # fmt: skip
    listing = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [manifest]}
    return api.manifest(repo, "ltsc2022", listing), foreign["digest"]


# -- nested indexes and unknown entries --------------------------------------------------------
NESTED_SOURCE = "opencontainers/image-spec image-index.md (manifests may list indexes)"
UNKNOWN_SOURCE = (
    "opencontainers/image-spec descriptor.md (mediaType of any registered type);"
    " distribution v2.8.3 manifestlisthandler.go verifyManifest (entries need only exist)"
)


def nested_index(api: Api, repo: str, gen: int) -> Descriptor:
    """An index of indexes: a release index listing a per-variant index of two images."""
    inner = api.manifest(
        repo,
        None,
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [image(api, repo, f"nested-{gen}-{i}") for i in range(2)]},
    )  # fmt: skip
    outer = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [inner]}
    return api.manifest(repo, "release", outer)


def unknown_entries(api: Api, repo: str, gen: int) -> Descriptor:
    """An index whose entries have media types nobody registered: one is a layer blob, one
    an image manifest (pushed as a manifest), and one entry has no media type at all."""
    blob = api.blob(repo, tar_gz({"future": os.urandom(32)}), "application/vnd.example.future.v9")
    manifest = image(api, repo, f"unknown-{gen}")
    plain = {k: manifest[k] for k in ("digest", "size")}  # no media type
    other = api.blob(repo, os.urandom(100), "application/vnd.example.data")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            blob,
            {**manifest, "mediaType": "application/vnd.example.manifest.v2+json"},
            plain,
            {k: other[k] for k in ("digest", "size")},
        ],
    }
    return api.manifest(repo, "future", doc)


# -- real clients --------------------------------------------------------------------------------


def skopeo_zstd(registry: Registry, work: Path, repo: str, gen: int) -> None:
    """skopeo copy --dest-compress-format zstd: the OCI layer media type becomes +zstd."""
    layout = oci.Layout(work / f"zstd-{gen}")
    img = layout.image(
        [layout.layer({"base": b"zstd base"}), layout.layer({f"g{gen}": os.urandom(64)})],
        label=f"zstd {gen}",
    )
    layout.tag("z", img)
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-compress-format",
        "zstd",
        "--format",
        "oci",
        f"oci:{layout.path}:z",
        f"docker://{registry.host}/{repo}:zstd",
    )


def oras_push(
    registry: Registry,
    work: Path,
    repo: str,
    gen: int,
    *,
    subject: Any = None,
    tag: str = "artifact",
) -> None:
    """The `oras` Python SDK's push (oras/provider.py Registry.push): a manifest with its
    own config media type and one layer per file, titled by annotation; with `subject`, an
    artifact attached to that manifest (OCI 1.1)."""
    import oras.provider

    client = oras.provider.Registry(hostname=registry.host, insecure=True)
    folder = work / f"oras-{gen}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(os.urandom(256))
    (folder / "config.json").write_text(json.dumps({"generation": gen, "tag": tag}))
    cwd = os.getcwd()
    os.chdir(folder)  # the SDK wants paths below the working directory
    try:
        client.push(
            target=f"{registry.host}/{repo}:{tag}",
            files=["model.bin:application/vnd.example.model.v1"],
            manifest_config="config.json:application/vnd.example.config.v1+json",
            subject=subject,
            quiet=True,
        )
    finally:
        os.chdir(cwd)
