"""Random registry stores for the fault trials, and what a tag the registry serves needs,
read from the store itself (not with the janitor's code).

`generate` writes a store on disk, laid out as the registry's filesystem driver does (the
s3 driver uses the same paths as keys): several repositories, nested names, a namespace that
is no repository, a repository inside another one, tags of single images and of multi-arch
indexes (with attestation children), base layers shared across images and repositories, tags
pushed again over (the old revision stays linked and in the tag's index), revisions pushed by
digest with no tag, two tags on one manifest, blobs no manifest names, and young pushes and
blobs (younger than any grace) next to old ones (30 days).

`needs` follows what the registry follows to serve a pull: the tag's `current/link`, the
revision link and the blob of the manifest, recursively the children of an index, and the
config and layers of each image.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

V2 = "docker/registry/v2"
REPOSITORIES = f"{V2}/repositories"
BLOBS = f"{V2}/blobs/sha256"
HELD = ".registry-janitor-held"
OLD = time.time() - 30 * 86400
YOUNG_AGE = 60  # seconds: far below any grace the trials use
_TAG_LINK = re.compile(rf"{REPOSITORIES}/(.+)/_manifests/tags/([^/]+)/current/link")


def blob_path(digest: str) -> str:
    h = digest.removeprefix("sha256:")
    return f"{BLOBS}/{h[:2]}/{h}/data"


def revision_path(repo: str, digest: str) -> str:
    return (
        f"{REPOSITORIES}/{repo}/_manifests/revisions/sha256/{digest.removeprefix('sha256:')}/link"
    )


def tag_path(repo: str, tag: str) -> str:
    return f"{REPOSITORIES}/{repo}/_manifests/tags/{tag}/current/link"


@dataclass
class Generated:
    root: Path
    repositories: list[str]
    namespaces: list[str]  # directories under repositories/ that are no repository
    manifests: list[str] = field(default_factory=list)  # every manifest blob written
    young: set[str] = field(default_factory=set)  # store paths dated now - YOUNG_AGE
    keep_last_n: int = 2

    def directories(self) -> list[str]:
        """Store paths of the directories a scan or a GC lists (rule targets)."""
        out = [REPOSITORIES, BLOBS] + [f"{REPOSITORIES}/{n}" for n in self.namespaces]
        out += sorted({blob_path(d).rsplit("/", 2)[0] for d in self.manifests})[:3]
        for r in self.repositories:
            base = f"{REPOSITORIES}/{r}"
            out += [base, f"{base}/_manifests/tags", f"{base}/_manifests/revisions/sha256"]
        return out

    def files(self) -> list[str]:
        """Store paths of files a scan or a GC reads (rule targets)."""
        return sorted(
            str(p.relative_to(self.root))
            for p in (self.root / REPOSITORIES).rglob("link")
            if "/_layers/" not in str(p) and "/index/" not in str(p)
        ) + [blob_path(d) for d in self.manifests]


class _Writer:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.mtimes: dict[str, float] = {}
        self.manifests: list[str] = []
        self.n = 0

    def file(self, path: str, data: bytes, when: float) -> None:
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.mtimes[path] = when

    def blob(self, data: bytes, when: float) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = blob_path(digest)
        # A blob pushed again keeps its first upload's date (the registry skips the upload).
        if path not in self.mtimes:
            self.file(path, data, when)
        return digest

    def unique(self, what: str) -> bytes:
        self.n += 1
        return f"{what} {self.n} {self.rng.random()}".encode()

    def image(self, repo: str, when: float, shared: list[bytes], arch: str = "amd64") -> str:
        layers = [self.blob(self.rng.choice(shared), when)] if shared else []
        layers += [self.blob(self.unique("layer"), when) for _ in range(self.rng.randint(1, 2))]
        config = self.blob(
            json.dumps({"arch": arch, "n": self.unique("config").decode()}).encode(), when
        )
        for d in [config, *layers]:  # the repository's links to its blobs
            self.file(f"{REPOSITORIES}/{repo}/_layers/sha256/{d[7:]}/link", d.encode(), when)
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1}
                       for d in layers],
        }  # fmt: skip
        return self.manifest(repo, json.dumps(doc).encode(), when)

    def index(self, repo: str, when: float, shared: list[bytes]) -> str:
        children = [self.image(repo, when, shared, arch) for arch in ("amd64", "arm64")]
        if self.rng.random() < 0.5:  # buildx's attestation manifest, platform unknown/unknown
            children.append(self.image(repo, when, [], "unknown"))
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": c, "size": 1} for c in children],
        }  # fmt: skip
        return self.manifest(repo, json.dumps(doc).encode(), when)

    def manifest(self, repo: str, data: bytes, when: float) -> str:
        digest = self.blob(data, when)
        self.manifests.append(digest)
        self.file(revision_path(repo, digest), digest.encode(), when)
        return digest

    def tag(self, repo: str, tag: str, digest: str, when: float) -> None:
        base = f"{REPOSITORIES}/{repo}/_manifests/tags/{tag}"
        self.file(f"{base}/current/link", digest.encode(), when)
        self.file(f"{base}/index/sha256/{digest[7:]}/link", digest.encode(), when)


def generate(root: Path, seed: int) -> Generated:
    rng = random.Random(seed)
    w = _Writer(root, rng)
    (root / REPOSITORIES).mkdir(parents=True)
    (root / BLOBS).mkdir(parents=True)
    names = ["ci/app", "ci/multi", "team/svc", "team/svc/api", "lib/x/tool", "solo", "cache"]
    repos = sorted(rng.sample(names, rng.randint(2, 4)))
    # Directories under repositories/ that hold repositories but are none themselves.
    namespaces = sorted({r.rsplit("/", 1)[0] for r in repos if "/" in r} - set(repos))
    namespaces = sorted(set(namespaces) | {n.split("/")[0] for n in namespaces})
    shared = [w.unique("base layer") for _ in range(rng.randint(1, 3))]
    now = time.time()
    t = OLD
    for repo in repos:
        tags = [f"v{i}" for i in range(rng.randint(1, 4))] + (
            ["latest"] if rng.random() < 0.5 else []
        )
        for tag in tags:
            for _push in range(rng.choice((1, 1, 1, 2, 3))):  # pushed again over itself
                t += 1
                young = rng.random() < 0.15
                when = now - YOUNG_AGE if young else t
                build = w.index if rng.random() < 0.35 else w.image
                w.tag(repo, tag, build(repo, when, shared), when)
        if rng.random() < 0.4:  # two tags on one manifest
            digest = (root / tag_path(repo, tags[0])).read_text()
            t += 1
            w.tag(repo, "alias", digest, t)
        for _ in range(rng.choice((0, 0, 1, 2))):  # pushed by digest, never tagged
            t += 1
            w.image(repo, t, shared)
    for _ in range(rng.randint(0, 4)):  # uploads no manifest names, old and young
        w.blob(w.unique("orphan"), rng.choice((OLD, now - YOUNG_AGE)))
    date(root, w.mtimes)
    gen = Generated(root, repos, namespaces, w.manifests, keep_last_n=rng.randint(0, 3))
    gen.young = {p for p, when in w.mtimes.items() if when > now - 3600}
    return gen


def date(root: Path, mtimes: dict[str, float]) -> None:
    """Directories old, then every file at its own time."""
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for n in dirnames:
            os.utime(os.path.join(dirpath, n), (OLD, OLD))
    for path, when in mtimes.items():
        os.utime(root / path, (when, when))


def files_below(root: Path) -> set[str]:
    """Every file below a local store (store paths)."""
    out = set()
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def readable(files: set[str]) -> list[str]:
    """The files `served` and `needs` read: links and blobs (small in generated stores)."""
    return sorted(p for p in files if p.endswith(("/link", "/data")))


def served(files: set[str], read: Callable[[str], bytes]) -> dict[tuple[str, str], str]:
    """(repo, tag) -> manifest digest, for every tag the registry serves: its current/link
    names a digest whose revision link and manifest blob exist."""
    out = {}
    for path in files:
        m = _TAG_LINK.fullmatch(path)
        if not m:
            continue
        digest = read(path).decode().strip()
        if revision_path(m[1], digest) in files and blob_path(digest) in files:
            out[(m[1], m[2])] = digest
    return out


def needs(repo: str, digest: str, read: Callable[[str], bytes]) -> tuple[set[str], set[str]]:
    """(blob digests, revision link paths) a pull of `digest` from `repo` needs."""
    blobs: set[str] = set()
    links: set[str] = set()
    todo = [digest]
    while todo:
        d = todo.pop()
        if d in blobs:
            continue
        blobs.add(d)
        links.add(revision_path(repo, d))
        doc = json.loads(read(blob_path(d)))
        todo += [c["digest"] for c in doc.get("manifests", [])]
        blobs |= {b["digest"] for b in ([doc["config"]] if "config" in doc else [])}
        blobs |= {b["digest"] for b in doc.get("layers", [])}
    return blobs, links


@dataclass
class Damage:
    """What a run did to the tags the registry served before it."""

    blobs_deleted: int  # blob data files gone (rightly or not)
    wrongly_deleted: list[str]  # blobs a still-served tag needs, gone for good
    left_held: list[str]  # entries left in the janitor's hold (but `excused`)
    unlinked: list[str]  # revision links a still-served tag needs, gone

    @property
    def harmful(self) -> bool:
        return bool(self.wrongly_deleted or self.left_held or self.unlinked)


def damage(
    before: set[str],
    read_before: Callable[[str], bytes],
    after: set[str],
    excused: frozenset[str] = frozenset(),
) -> Damage:
    """Compare the store's files before and after a run. A tag counts if the registry served
    it before (`served`) and its current/link is still there (a tag the prune deleted frees
    what it needed). `excused`: held blobs (hex) the run named in an error (a delete or a
    put-back that failed): they wait in the hold for the next run, by design (gc.py)."""
    need_blobs: set[str] = set()
    need_links: set[str] = set()
    for (repo, tag), digest in served(before, read_before).items():
        if tag_path(repo, tag) in after:
            b, links = needs(repo, digest, read_before)
            need_blobs |= b
            need_links |= links
    blob_files = {p for p in before if p.startswith(BLOBS) and p.endswith("/data")}
    return Damage(
        blobs_deleted=len(blob_files - after),
        wrongly_deleted=sorted(d for d in need_blobs if blob_path(d) not in after),
        left_held=sorted(p for p in after if held_away(p, after, excused)),
        unlinked=sorted(p for p in need_links if p not in after),
    )


def held_away(path: str, after: set[str], excused: frozenset[str]) -> bool:
    """Is `path` an entry of the hold whose original the registry no longer sees? A copy in
    the hold next to its original (an S3 hold whose delete half failed) is not: the next
    run drops it."""
    parts = path.split("/")
    if parts[0] != HELD or len(parts) < 4:
        return False
    if parts[1] == "blobs":  # .registry-janitor-held/blobs/<hex>/data
        return parts[2] not in excused and blob_path(parts[2]) not in after
    # .registry-janitor-held/layers/<repo with % for />/sha256/<hex>/link
    repo = parts[2].replace("%", "/")
    return f"{REPOSITORIES}/{repo}/_layers/{'/'.join(parts[3:])}" not in after


def docker_files(paths: Iterable[str]) -> set[str]:
    """The registry's own files (what an outcome is compared on)."""
    return {p for p in paths if p.startswith("docker/")}
