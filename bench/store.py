"""Synthetic registry stores in the Distribution (2.8.x / 3.x) filesystem-driver layout.

A store is ``<root>/docker/registry/v2/{blobs,repositories}``: real JSON manifests whose
digests are the sha256 of their bytes, configs and small layer blobs, revision links, tag
``current/link`` and ``index/sha256/<hex>/link`` files and ``_layers`` links, exactly as the
registry writes them on push. Tag mtimes (``current/link``) are spread and unique per
repository, in an order unrelated to the tag names, so ranking by last push is defined.

Each repository also holds a few untagged revisions (``orphans``), as left behind when a
tag such as ``latest`` is pushed again; they sit in one tag's ``index/`` history.

Generation is deterministic: the same spec gives byte-identical content, so a store is
generated once into a cache directory and copied (``cp -a``) for every timed run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

V2 = Path("docker/registry/v2")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
# 2026-01-01T00:00:00Z; tag i of a repository is pushed at T0 + rank * 60 s + repo offset.
T0 = 1_767_225_600
GENERATOR_VERSION = "4"


@dataclass(frozen=True)
class StoreSpec:
    """What to generate. ``kind`` is ``image`` (schema2 image per tag) or ``index``."""

    name: str
    repos: int
    tags: int
    kind: str = "image"
    orphans: int = -1  # untagged revisions per repository; -1: tags // 20, at least 1

    @property
    def orphans_per_repo(self) -> int:
        return self.orphans if self.orphans >= 0 else max(1, self.tags // 20)

    @property
    def total_tags(self) -> int:
        return self.repos * self.tags

    def key(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True) + GENERATOR_VERSION
        return (
            f"{self.name}-{self.repos}x{self.tags}-{self.kind}-"
            + hashlib.sha256(raw.encode()).hexdigest()[:10]
        )


def repo_name(index: int) -> str:
    """Nested names; every 100th repository is the group itself, so ``p00`` and ``p00/s0001``
    are both repositories (a repository inside another one)."""
    group = index // 100
    if index % 100 == 0:
        return f"p{group:02d}"
    return f"p{group:02d}/s{index:04d}"


def tag_name(index: int) -> str:
    return f"v{index:05d}"


def push_rank(tag_index: int, tags: int) -> int:
    """A permutation of 0..tags-1 unrelated to name order (multiplicative, stride coprime)."""
    stride = 7919
    while _gcd(stride, tags) != 1:
        stride += 2
    return (tag_index * stride + 13) % tags


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def tag_mtime(repo_index: int, tag_index: int, tags: int) -> int:
    return T0 + push_rank(tag_index, tags) * 60 + repo_index


class _Writer:
    """Writes blobs and links with as few syscalls as the layout allows. Every file gets the
    mtime of the push that wrote it (``when``): the janitor may look at revision link ages."""

    def __init__(self, root: Path) -> None:
        self.blobs = root / V2 / "blobs" / "sha256"
        self.repos = root / V2 / "repositories"
        self.when = T0

    def blob(self, data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        d = self.blobs / hexd[:2] / hexd
        try:
            os.mkdir(d)
        except FileExistsError:
            return hexd
        _write(d / "data", data, self.when)
        return hexd

    def link(self, path: Path, hexd: str) -> None:
        os.makedirs(path, exist_ok=True)
        _write(path / "link", b"sha256:" + hexd.encode(), self.when)


def _write(path: Path, data: bytes, mtime: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


def _json(obj: object) -> bytes:
    return json.dumps(obj, indent=3).encode()


def _desc(media_type: str, data: bytes, hexd: str, **extra: object) -> dict[str, object]:
    d: dict[str, object] = {"mediaType": media_type, "size": len(data), "digest": "sha256:" + hexd}
    d.update(extra)
    return d


def _padded(seed: str, size: int) -> bytes:
    """Deterministic, unique, incompressible-looking small layer content."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


@dataclass
class _Image:
    manifest: bytes
    manifest_hex: str
    layer_hexes: list[str]  # config and layers (what _layers links point at)


def _image(w: _Writer, seed: str, *, oci: bool, arch: str, base_hex: str, base: bytes) -> _Image:
    layer = _padded("layer/" + seed, 512)
    layer_hex = w.blob(layer)
    config_obj = {
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin"], "Labels": {"bench.seed": seed}},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + base_hex, "sha256:" + layer_hex],
        },
    }
    config = _json(config_obj)
    config_hex = w.blob(config)
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": _desc(OCI_CONFIG if oci else DOCKER_CONFIG, config, config_hex),
        "layers": [_desc(layer_type, base, base_hex), _desc(layer_type, layer, layer_hex)],
    }
    manifest = _json(manifest_obj)
    return _Image(manifest, w.blob(manifest), [config_hex, base_hex, layer_hex])


def _attestation(w: _Writer, seed: str, subject_hex: str) -> _Image:
    statement = _json(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": seed, "digest": {"sha256": subject_hex}}],
            "predicate": {"spdxVersion": "SPDX-2.3", "name": seed},
        }
    )
    statement_hex = w.blob(statement)
    config = _json(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + statement_hex]},
        }
    )
    config_hex = w.blob(config)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _desc(OCI_CONFIG, config, config_hex),
            "layers": [
                _desc(
                    IN_TOTO,
                    statement,
                    statement_hex,
                    annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"},
                )
            ],
        }
    )
    return _Image(manifest, w.blob(manifest), [config_hex, statement_hex])


def _index(w: _Writer, seed: str, bases: dict[str, tuple[str, bytes]]) -> list[_Image]:
    """An OCI index as buildx pushes it: 2 platforms + 2 attestation manifests.
    Returns [index, children...]."""
    children: list[tuple[_Image, dict[str, object]]] = []
    platforms: list[_Image] = []
    for arch in ("amd64", "arm64"):
        base_hex, base = bases[arch]
        img = _image(w, f"{seed}/{arch}", oci=True, arch=arch, base_hex=base_hex, base=base)
        platforms.append(img)
        children.append((img, {"platform": {"architecture": arch, "os": "linux"}}))
    for arch, img in zip(("amd64", "arm64"), platforms, strict=True):
        att = _attestation(w, f"{seed}/{arch}/att", img.manifest_hex)
        extra = {
            "annotations": {
                "vnd.docker.reference.digest": "sha256:" + img.manifest_hex,
                "vnd.docker.reference.type": "attestation-manifest",
            },
            "platform": {"architecture": "unknown", "os": "unknown"},
        }
        children.append((att, extra))
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                _desc(OCI_MANIFEST, c.manifest, c.manifest_hex, **extra) for c, extra in children
            ],
        }
    )
    top = _Image(index, w.blob(index), [])
    return [top] + [c for c, _ in children]


def _shared_bases(w: _Writer) -> dict[str, tuple[str, bytes]]:
    out = {}
    w.when = T0 - 86400
    for arch in ("amd64", "arm64"):
        data = _padded("base/" + arch, 2048)
        out[arch] = (w.blob(data), data)
    return out


def _gen_repos(root: str, spec: StoreSpec, repo_indexes: list[int]) -> int:
    w = _Writer(Path(root))
    bases = _shared_bases(w)
    count = 0
    for r in repo_indexes:
        count += _gen_repo(w, spec, r, bases)
    return count


def _gen_repo(w: _Writer, spec: StoreSpec, r: int, bases: dict[str, tuple[str, bytes]]) -> int:
    name = repo_name(r)
    repo = w.repos / name
    manifests = repo / "_manifests"
    revisions = manifests / "revisions" / "sha256"
    layers = repo / "_layers" / "sha256"
    os.makedirs(revisions)
    os.makedirs(layers)
    linked_layers: set[str] = set()

    def push(seed: str, when: int) -> str:
        w.when = when
        if spec.kind == "index":
            images = _index(w, seed, bases)
        else:
            base_hex, base = bases["amd64"]
            images = [_image(w, seed, oci=False, arch="amd64", base_hex=base_hex, base=base)]
        for img in images:
            w.link(revisions / img.manifest_hex, img.manifest_hex)
            for lh in img.layer_hexes:
                if lh not in linked_layers:
                    linked_layers.add(lh)
                    w.link(layers / lh, lh)
        return images[0].manifest_hex

    # Untagged leftovers of overwritten tags; they stay in the tag's index/ history.
    orphan_hexes = [
        push(f"{name}/orphan{k}", T0 - 3600 * (k + 1) + r) for k in range(spec.orphans_per_repo)
    ]
    tags_dir = manifests / "tags"
    for t in range(spec.tags):
        tag = tag_name(t)
        mtime = tag_mtime(r, t, spec.tags)
        hexd = push(f"{name}/{tag}", mtime)
        tag_dir = tags_dir / tag
        w.link(tag_dir / "index" / "sha256" / hexd, hexd)
        if t < len(orphan_hexes):
            w.when = T0 - 3600 * (t + 1) + r  # the overwritten push, in this tag's history
            w.link(tag_dir / "index" / "sha256" / orphan_hexes[t], orphan_hexes[t])
            w.when = mtime
        w.link(tag_dir / "current", hexd)
    return spec.tags


def generate(root: Path, spec: StoreSpec, workers: int = 2) -> None:
    """Generate ``spec`` into ``root`` (which must not exist)."""
    blobs = root / V2 / "blobs" / "sha256"
    for i in range(256):
        os.makedirs(blobs / f"{i:02x}")
    os.makedirs(root / V2 / "repositories")
    chunks: list[list[int]] = [list(range(k, spec.repos, workers)) for k in range(workers)]
    chunks = [c for c in chunks if c]
    if len(chunks) == 1:
        total = _gen_repos(str(root), spec, chunks[0])
    else:
        with ProcessPoolExecutor(max_workers=len(chunks)) as pool:
            total = sum(
                pool.map(_gen_repos, [str(root)] * len(chunks), [spec] * len(chunks), chunks)
            )
    assert total == spec.total_tags, (total, spec.total_tags)


def cached_store(cache_dir: Path, spec: StoreSpec, log: bool = True) -> Path:
    """The store for ``spec`` in ``cache_dir``, generated on first use (atomic rename)."""
    final = cache_dir / spec.key()
    if (final / ".complete").exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / (spec.key() + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    if final.exists():
        shutil.rmtree(final)
    start = time.perf_counter()
    generate(tmp, spec, workers=os.cpu_count() or 1)
    (tmp / ".complete").write_text(json.dumps(asdict(spec)) + "\n")
    os.rename(tmp, final)
    if log:
        print(
            f"  generated {spec.name} ({spec.repos} x {spec.tags}, {spec.kind}) "
            f"in {time.perf_counter() - start:.1f} s -> {final}",
            flush=True,
        )
    return final


def copy_store(
    src: Path, dest: Path, workers: int = 0, sync: bool = True, hardlinks: bool = False
) -> Path:
    """An independent copy (``cp -a``: no hardlinks shared with the cache, same mtimes),
    synced to disk so writeback does not run during the timed part. The blob prefix
    directories and top-level repositories are copied by ``workers`` ``cp`` processes.

    For the smoke size, where nothing timed means anything: ``sync=False`` and
    ``hardlinks=True`` (``cp -al``: new directories, files linked to the cache's). That is
    safe for every contender here: they rename, unlink and create files, and never write to
    or change the times of a file that exists."""
    if dest.exists():
        remove_tree(dest)
    workers = workers or (os.cpu_count() or 1)
    subtrees: list[tuple[Path, Path]] = []
    for part in (V2 / "blobs" / "sha256", V2 / "repositories"):
        (dest / part).mkdir(parents=True)
        subtrees += [(src / part / name, dest / part) for name in sorted(os.listdir(src / part))]
    batches = [subtrees[k::workers] for k in range(workers)]
    procs = []
    for batch in batches:
        if not batch:
            continue
        by_target: dict[Path, list[str]] = {}
        for s, d in batch:
            by_target.setdefault(d, []).append(str(s))
        script = " && ".join(
            f"cp -a{'l' if hardlinks else ''} " + " ".join(_q(x) for x in srcs) + " " + _q(str(d))
            for d, srcs in by_target.items()
        )
        procs.append(subprocess.Popen(["sh", "-c", script]))
    failed = [p.wait() for p in procs]
    if any(failed):
        raise RuntimeError(f"copying {src} to {dest} failed")
    for name in os.listdir(src):  # .complete and anything else at the top
        if not (src / name).is_dir():
            shutil.copy2(src / name, dest / name)
    for rel in (
        "",
        "docker",
        "docker/registry",
        str(V2),
        str(V2 / "blobs"),
        str(V2 / "blobs" / "sha256"),
        str(V2 / "repositories"),
    ):
        st = os.stat(src / rel)
        os.utime(dest / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    if sync:
        subprocess.run(["sync", "-f", str(dest)], check=True)
    return dest


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def remove_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def iter_repositories(root: Path) -> Iterator[tuple[str, Path]]:
    """(name, path) of every repository in a store (used by the plain recipe and checks)."""
    top = root / V2 / "repositories"
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = [e for e in it if e.is_dir(follow_symlinks=False)]
        for e in entries:
            if e.name == "_manifests":
                yield str(d.relative_to(top)), d
            elif not e.name.startswith("_"):
                stack.append(Path(e.path))
