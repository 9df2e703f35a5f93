"""One store built by real pushes, shared by the reliability tests, and checks of a store on disk.

The store (built once per session, then copied per trial):

| repository   | tags                                             | KEEP_LAST_N=2 keeps                |
|--------------|--------------------------------------------------|------------------------------------|
| ci/app       | b0..b5, `latest` pushed 3 times, release-1       | latest (= b5's image), release-1, b5, b4 |
| ci/multi     | m0..m3: indexes amd64+arm64+2 attestations       | m3, m2 (m1 shares its amd64 child with m3) |
| team/svc     | v1..v3                                           | v3, v2                             |
| team/svc/api | a0..a3 (a repository inside a repository)        | a3, a2                             |
| scratch/tmp  | t0, t1; the policy file keeps 0                  | nothing: the repository goes       |

Every image shares one base layer. Everything is aged 30 days (past the janitor's one-hour
grace for unreachable revisions and quiet `_layers`), then each tag gets its own push time.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import janitor
import oci
from registry import Registry, blob_data, push, revision_link, running, tag_link
from stores import REPOSITORIES, FsStore, Store

OLD = time.time() - 30 * 86400
KEEP_LAST_N = 2
PROTECT = r"latest|release-\d+"
SWEEP_ARGS_BASE = ["--keep-last-n", str(KEEP_LAST_N), "--protect-tags", PROTECT]


NewStore = Callable[[str], Store | None]  # hint -> an empty store (None: a directory)


@dataclass
class Template:
    store: Store  # the registry's store, never changed after the build
    policy: Path
    new_store: NewStore
    kept: dict[str, str] = field(default_factory=dict)  # "repo:tag" -> manifest digest
    multi: set[str] = field(default_factory=set)  # kept refs that are indexes
    pruned: set[str] = field(default_factory=set)
    removed_repositories: set[str] = field(default_factory=set)

    @property
    def sweep_args(self) -> list[str]:
        return [*SWEEP_ARGS_BASE, "--policy-file", str(self.policy)]

    def kept_tags(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for ref in self.kept:
            repo, tag = ref.rsplit(":", 1)
            out.setdefault(repo, set()).add(tag)
        return out

    @property
    def backend(self) -> str:
        return self.store.backend

    def copy_to(self, workdir: Path) -> Registry:
        """A registry (not started) on a fresh copy of the store, mtimes kept."""
        reg = Registry(workdir, store=self.new_store("copy"))
        self.store.copy_into(reg.store)
        return reg


def janitor_command(reg: Registry, command: str, *args: str, run_once: bool = True) -> list[str]:
    """The janitor as a subprocess to Popen (janitor.run waits for it; these get killed)."""
    return [
        sys.executable, "-m", "registry_janitor", command,
        *(["--run-once"] if run_once else []), *reg.janitor_args(), *args,
    ]  # fmt: skip


def janitor_env(reg: Registry) -> dict[str, str]:
    return janitor.janitor_env(reg)


def build(work: Path, new_store: NewStore) -> Template:
    layout = oci.Layout(work / "layout")
    base = layout.layer({"etc/os-release": b"ID=reliability\n"})
    pushes: list[tuple[str, str, oci.Descriptor, bool]] = []  # oci name, ref, desc, multi
    push_time: dict[str, float] = {}

    def image(label: str, arch: str = "amd64") -> oci.Descriptor:
        return layout.image(
            [base, layout.layer({f"{label}.txt": label.encode()})], arch=arch, label=label
        )

    def index(label: str, amd: oci.Descriptor) -> oci.Descriptor:
        arm = image(f"arm-{label}", arch="arm64")
        return layout.index(
            [amd, arm, layout.attestation(amd, label), layout.attestation(arm, label)]
        )

    def add(ref: str, desc: oci.Descriptor, when: float, multi: bool = False) -> None:
        name = re.sub(r"[^a-z0-9]", "-", ref) + f"-{len(pushes)}"
        layout.tag(name, desc)
        pushes.append((name, ref, desc, multi))
        push_time[ref] = when  # an overwritten tag ends with the last push's time

    app = [image(f"app{i}") for i in range(6)]
    for i, desc in enumerate(app):
        add(f"ci/app:b{i}", desc, OLD + 100 + i)
    add("ci/app:latest", image("latest-1"), OLD + 10)
    add("ci/app:latest", image("latest-2"), OLD + 20)
    add("ci/app:latest", app[5], OLD + 30)
    release = image("release-1")
    add("ci/app:release-1", release, OLD)

    shared_amd = image("amd-shared")
    m = [index("m0", image("amd-m0")), index("m1", shared_amd), index("m2", image("amd-m2"))]
    m.append(index("m3", shared_amd))
    for i, desc in enumerate(m):
        add(f"ci/multi:m{i}", desc, OLD + 200 + i, multi=True)

    svc = [image(f"svc{i}") for i in range(3)]
    for i, desc in enumerate(svc):
        add(f"team/svc:v{i + 1}", desc, OLD + 300 + i)
    api = [image(f"api{i}") for i in range(4)]
    for i, desc in enumerate(api):
        add(f"team/svc/api:a{i}", desc, OLD + 400 + i)
    add("scratch/tmp:t0", image("scratch0"), OLD + 500)
    add("scratch/tmp:t1", image("scratch1"), OLD + 501)

    reg_dir = work / "template"
    with running(reg_dir, store=new_store("template")) as reg:
        for name, ref, desc, multi in pushes:
            push(layout.path, name, reg, ref, multi=multi)
    age(reg, push_time)

    policy = work / "policy.toml"
    policy.write_text('[[rules]]\nmatch = "scratch/**"\nkeep_last_n = 0\n')
    t = Template(reg.store, policy, new_store)
    t.kept = {
        "ci/app:latest": app[5]["digest"],
        "ci/app:release-1": release["digest"],
        "ci/app:b5": app[5]["digest"],
        "ci/app:b4": app[4]["digest"],
        "ci/multi:m3": m[3]["digest"],
        "ci/multi:m2": m[2]["digest"],
        "team/svc:v3": svc[2]["digest"],
        "team/svc:v2": svc[1]["digest"],
        "team/svc/api:a3": api[3]["digest"],
        "team/svc/api:a2": api[2]["digest"],
    }
    t.multi = {"ci/multi:m3", "ci/multi:m2"}
    t.pruned = {ref for _, ref, _, _ in pushes} - set(t.kept)
    t.removed_repositories = {"scratch/tmp"}
    return t


def age(reg: Registry, push_time: dict[str, float]) -> None:
    """Everything 30 days old, then each tag's current/link at its own push time."""
    reg.store.age_all(OLD, {tag_link(*ref.rsplit(":", 1)): when for ref, when in push_time.items()})


# -- checks of a store -----------------------------------------------------------------


def tag_problems(store: Store, repo: str, tag: str, expect: str | None = None) -> list[str]:
    """What a pull of repo:tag would miss, read from the store the way the registry serves
    it: the tag's current/link, a revision link and the blob for the manifest and every
    child, a `_layers` link and the blob for every config and layer."""
    try:
        digest = store.read_text(tag_link(repo, tag))
    except OSError as exc:
        return [f"{repo}:{tag}: no current/link ({exc.__class__.__name__})"]
    problems = []
    if expect is not None and digest != expect:
        problems.append(f"{repo}:{tag}: points at {digest}, expected {expect}")
    layers = f"{REPOSITORIES}/{repo}/_layers/sha256"
    todo = [digest]
    while todo:
        d = todo.pop()
        if not store.is_file(revision_link(repo, d)):
            problems.append(f"{repo}:{tag}: revision {d} unlinked")
        try:
            doc = json.loads(store.read(blob_data(d)))
        except OSError:
            problems.append(f"{repo}:{tag}: manifest blob {d} missing")
            continue
        todo += [c["digest"] for c in doc.get("manifests", [])]
        for b in ([doc["config"]] if "config" in doc else []) + doc.get("layers", []):
            bhex = b["digest"].removeprefix("sha256:")
            if not store.is_file(blob_data(b["digest"])):
                problems.append(f"{repo}:{tag}: blob {b['digest']} missing")
            if not store.is_file(f"{layers}/{bhex}/link"):
                problems.append(f"{repo}:{tag}: layer link {b['digest']} missing")
    return problems


_TAG_FILE = re.compile(r"(.+)/_manifests/tags/([^/]+)/.+")


def visible_tags(store: Store) -> dict[str, set[str]]:
    """repo -> tags the registry lists in tags/list: tag directories (on a filesystem, empty
    ones too), or tag prefixes with an object below (in a bucket)."""
    out: dict[str, set[str]] = {}
    if isinstance(store, FsStore):
        repos = store.root / REPOSITORIES
        for tags_dir in repos.glob("**/_manifests/tags"):
            names = {p.name for p in tags_dir.iterdir()}
            if names:
                out[str(tags_dir.parent.parent.relative_to(repos))] = names
        return out
    for path in store.files(REPOSITORIES):
        m = _TAG_FILE.fullmatch(path)
        if m:
            out.setdefault(m[1], set()).add(m[2])
    return out


def snapshot(store: Store) -> dict[str, str]:
    """Every file under docker/ (relative path -> a digest of its content)."""
    return {path: f.content for path, f in store.files("docker").items()}


def trash_entries(store: Store) -> list[str]:
    """What the janitor's trash and hold still hold."""
    out = []
    for folder in (".registry-janitor-trash", ".registry-janitor-held/blobs",
                   ".registry-janitor-held/layers"):  # fmt: skip
        out += [f"{folder}/{name}" for name in store.listdir(folder)]
    return sorted(out)


@dataclass
class Reference:
    """An uninterrupted sweep of a copy of the template: what every trial must end at."""

    snapshot: dict[str, str]
    counts: dict[str, int]  # JSON event type -> how many
    run_seconds: float  # the janitor process, start to exit
    gc_seconds: float


def check_final(store: Store, template: Template, reference: Reference) -> None:
    """After a completed sweep: no trash, no GC owed, the kept set, every kept tag whole, and
    the same files as the uninterrupted sweep left."""
    assert trash_entries(store) == [], "trash left behind"
    assert not store.is_file(".registry-janitor.gc-pending"), "GC still owed"
    assert visible_tags(store) == template.kept_tags(), (visible_tags(store), template.kept_tags())
    for ref, digest in template.kept.items():
        repo, tag = ref.rsplit(":", 1)
        assert tag_problems(store, repo, tag, digest) == []
    snap = snapshot(store)
    missing = sorted(set(reference.snapshot) - set(snap))
    extra = sorted(set(snap) - set(reference.snapshot))
    changed = sorted(k for k, v in snap.items() if reference.snapshot.get(k, v) != v)
    diff = {"missing": missing, "extra": extra, "changed": changed}
    assert (missing, extra, changed) == ([], [], []), f"differs from an uninterrupted sweep: {diff}"
