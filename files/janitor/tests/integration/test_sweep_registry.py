"""A sweep against a real registry process, with images pushed and pulled by skopeo.

One registry and one set of pushes per garbage collection engine (pushes are the slow part):
the janitor's own and the registry's garbage-collect must leave the same store. The fixture
runs a dry run and then the real sweep, and each test checks one outcome.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import janitor
import oci
import pytest
from registry import BACKENDS, Registry, pull, push, running, tag_link
from stores import REPOSITORIES, store_factory

OLD = time.time() - 30 * 86400


@dataclass
class Scenario:
    registry: Registry
    workdir: Path
    kept: dict[str, oci.Descriptor] = field(default_factory=dict)  # ref -> descriptor
    multi: set[str] = field(default_factory=set)  # refs that are indexes
    pruned: list[str] = field(default_factory=list)
    gone_blobs: set[str] = field(default_factory=set)
    shared_blobs: set[str] = field(default_factory=set)
    engine: str = "janitor"
    args: list[str] = field(default_factory=list)
    dry_run: subprocess.CompletedProcess[str] | None = None
    tree_before_dry_run: str = ""
    tree_after_dry_run: str = ""
    sweep: subprocess.CompletedProcess[str] | None = None
    metrics: Path | None = None


@pytest.fixture(
    scope="module",
    params=list(itertools.product(["janitor", "registry"], BACKENDS)),
    ids=lambda p: "-".join(p),
)
def scenario(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Scenario]:
    engine, backend = request.param
    work = tmp_path_factory.mktemp(f"sweep-{engine}-{backend}")
    layout = oci.Layout(work / "layout")
    base = layout.layer({"etc/os-release": b"ID=test\n"})  # shared by every image
    store = store_factory(backend, request)(f"sweep-{engine}")

    with running(work / "registry", store=store) as reg:
        sc = Scenario(reg, work, engine=engine)
        pushes: list[tuple[str, str, oci.Descriptor, bool, float]] = []  # oci tag, ref, ...

        def image(label: str, arch: str = "amd64") -> oci.Descriptor:
            return layout.image(
                [base, layout.layer({f"{label}.txt": label.encode()})], arch=arch, label=label
            )

        def add(ref: str, desc: oci.Descriptor, when: float, multi: bool = False) -> None:
            name = re.sub(r"[^a-z0-9]", "-", ref)
            layout.tag(name, desc)
            pushes.append((name, ref, desc, multi, when))

        # team/app: N=2 keeps `stable` and b5; `stable` shares b1's digest, so b1's image
        # survives although the name b1 goes; release-1 is protected.
        app = {i: image(f"app{i}") for i in range(1, 6)}
        for i, desc in app.items():
            add(f"team/app:b{i}", desc, OLD + i * 10)
        add("team/app:stable", app[1], OLD + 100)
        rel = image("release")
        add("team/app:release-1", rel, OLD)

        # multi: three multi-platform indexes with attestations; m1 shares its amd64 image
        # with m2, so that child must stay while m1's own arm64 image goes.
        amd_shared = image("amd-shared")

        def index(label: str, amd: oci.Descriptor) -> oci.Descriptor:
            arm = image(f"arm-{label}", arch="arm64")
            return layout.index(
                [amd, arm, layout.attestation(amd, label), layout.attestation(arm, label)]
            )

        m1 = index("m1", amd_shared)
        m2 = index("m2", amd_shared)
        m3 = index("m3", image("amd-m3"))
        add("multi:m1", m1, OLD + 1, multi=True)
        add("multi:m2", m2, OLD + 2, multi=True)
        add("multi:m3", m3, OLD + 3, multi=True)

        # a and a/b: a repository inside a repository. a:latest is overwritten.
        first_latest, second_latest = image("a-latest-1"), image("a-latest-2")
        add("a:latest", first_latest, OLD + 5)
        add("a:v1", image("a-v1"), OLD + 1)
        x = {i: image(f"ab{i}") for i in range(1, 4)}
        for i, desc in x.items():
            add(f"a/b:x{i}", desc, OLD + i)

        # scratch/tmp: the policy keeps nothing, so the repository itself goes.
        scratch = image("scratch")
        add("scratch/tmp:t", scratch, OLD)

        for name, ref, desc, multi, _ in pushes:
            push(layout.path, name, reg, ref, multi=multi)
        layout.tag("a-latest-2", second_latest)
        push(layout.path, "a-latest-2", reg, "a:latest")
        # Everything old (revisions past their grace, blobs past garbage collection's,
        # scratch/tmp's `_layers` quiet), then each tag at its own push time.
        push_times = {tag_link(*ref.rsplit(":", 1)): when for _, ref, _, _, when in pushes}
        push_times[tag_link("a", "latest")] = OLD + 6
        reg.store.age_all(OLD, push_times)

        sc.kept = {
            "team/app:stable": app[1],
            "team/app:b5": app[5],
            "team/app:release-1": rel,
            "multi:m2": m2,
            "multi:m3": m3,
            "a:latest": second_latest,
            "a:v1": dict(pushes[-7][2]),
            "a/b:x3": x[3],
            "a/b:x2": x[2],
        }
        sc.kept["a:v1"] = next(d for _, r, d, _, _ in pushes if r == "a:v1")
        sc.multi = {"multi:m2", "multi:m3"}
        sc.pruned = [
            "team/app:b1",
            "team/app:b2",
            "team/app:b3",
            "team/app:b4",
            "multi:m1",
            "a/b:x1",
            "scratch/tmp:t",
        ]
        keep_blobs: set[str] = set()
        for desc in sc.kept.values():
            keep_blobs |= oci.blobs_of(layout, desc)
        drop_blobs: set[str] = set()
        for desc in (app[2], app[3], app[4], m1, x[1], scratch, first_latest):
            drop_blobs |= oci.blobs_of(layout, desc)
        sc.gone_blobs = drop_blobs - keep_blobs
        sc.shared_blobs = drop_blobs & keep_blobs
        assert base["digest"] in sc.shared_blobs and amd_shared["digest"] in sc.shared_blobs

        policy = work / "policy.toml"
        policy.write_text('[[rules]]\nmatch = "scratch/**"\nkeep_last_n = 0\n')
        args = [
            "--keep-last-n",
            "2",
            "--protect-tags",
            r"release-\d+",
            "--policy-file",
            str(policy),
            "--gc-engine",
            engine,
            # The overwritten `latest` goes in this sweep (the wait since it was first seen
            # unreachable is tested on its own).
            "--revision-grace",
            "0",
        ]
        sc.args = args
        sc.tree_before_dry_run = reg.store.fingerprint()
        sc.dry_run = janitor.run(reg, *args, "--dry-run", "--json")
        sc.tree_after_dry_run = reg.store.fingerprint()
        sc.metrics = work / "janitor.prom"
        sc.sweep = janitor.run(reg, *args, "--metrics-file", str(sc.metrics))
        yield sc


def test_dry_run_changes_nothing_and_names_everything(scenario: Scenario) -> None:
    result = scenario.dry_run
    assert result is not None and result.returncode == 0, result.stderr
    assert scenario.tree_before_dry_run == scenario.tree_after_dry_run
    events = janitor.events(result)
    would_delete = {f"{e['repository']}:{e['tag']}" for e in events if e["event"] == "tag_deleted"}
    assert would_delete == set(scenario.pruned)
    assert all(e["dry_run"] for e in events if e["event"] == "tag_deleted")
    unlinked = [e for e in events if e["event"] == "manifest_unlinked"]
    assert len(unlinked) >= 10  # b2-b4, m1 + its arm image + 2 attestations, x1, ...
    blobs = {str(e["digest"]) for e in events if e["event"] == "blob_deleted"}
    if scenario.engine == "janitor":  # prune and garbage collection in one plan
        assert blobs == scenario.gone_blobs
        assert all(e["dry_run"] and e["size"] > 0 for e in events if e["event"] == "blob_deleted")
    else:  # the registry's garbage-collect has no plan of what a prune would leave
        assert not blobs and not any(e["event"] == "gc_started" for e in events)


def test_sweep_succeeds_with_a_readable_summary(scenario: Scenario) -> None:
    result = scenario.sweep
    assert result is not None and result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(
        r"sweep done: 5 repositories, 9 tags kept, 7 deleted, \d+ manifests unlinked, "
        r"1 empty repository, \d+ blobs / [\d.]+ KiB reclaimed, gc [\d.]+ s$",
        last,
    ), last


@pytest.mark.parametrize(
    "ref",
    [
        "team/app:stable",
        "team/app:b5",
        "team/app:release-1",
        "multi:m2",
        "multi:m3",
        "a:latest",
        "a:v1",
        "a/b:x3",
        "a/b:x2",
    ],
)
def test_kept_tag_pulls_completely(scenario: Scenario, ref: str, tmp_path: Path) -> None:
    multi = ref in scenario.multi
    result = pull(scenario.registry, ref, tmp_path / "pulled", multi=multi)
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "pulled" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == scenario.kept[ref]["digest"]
    if multi:  # every platform image and attestation arrived
        pulled = {p.name for p in (tmp_path / "pulled" / "blobs" / "sha256").iterdir()}
        children = json.loads(
            (
                tmp_path
                / "pulled"
                / "blobs"
                / "sha256"
                / scenario.kept[ref]["digest"].removeprefix("sha256:")
            ).read_text()
        )["manifests"]
        assert len(children) == 4
        assert {c["digest"].removeprefix("sha256:") for c in children} <= pulled


@pytest.mark.parametrize("ref", ["team/app:b1", "team/app:b4", "multi:m1", "a/b:x1"])
def test_pruned_tag_is_gone(scenario: Scenario, ref: str, tmp_path: Path) -> None:
    repo, tag = ref.rsplit(":", 1)
    assert tag not in scenario.registry.tags(repo)
    result = pull(scenario.registry, ref, tmp_path / "pulled", multi=ref.startswith("multi"))
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr


def test_tags_list_after_sweep(scenario: Scenario) -> None:
    reg = scenario.registry
    assert reg.tags("team/app") == ["b5", "release-1", "stable"]
    assert reg.tags("multi") == ["m2", "m3"]
    assert reg.tags("a") == ["latest", "v1"]
    assert reg.tags("a/b") == ["x2", "x3"]


def test_unique_blobs_of_pruned_images_are_gone_and_shared_blobs_stay(scenario: Scenario) -> None:
    reg = scenario.registry
    still_there = {d for d in scenario.gone_blobs if reg.blob_exists(d)}
    assert still_there == set()
    missing = {d for d in scenario.shared_blobs if not reg.blob_exists(d)}
    assert missing == set()


def test_overwritten_latest_is_reclaimed(scenario: Scenario) -> None:
    revisions = f"{REPOSITORIES}/a/_manifests/revisions/sha256"
    assert scenario.registry.store.listdir(revisions) == {
        scenario.kept["a:latest"]["digest"][7:],
        scenario.kept["a:v1"]["digest"][7:],
    }


def test_empty_repository_leaves_the_catalog(scenario: Scenario) -> None:
    assert scenario.registry.catalog() == ["a", "a/b", "multi", "team/app"]


def test_metrics_file_parses(scenario: Scenario) -> None:
    assert scenario.metrics is not None
    samples: dict[str, float] = {}
    for line in scenario.metrics.read_text().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) registry_janitor_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'registry_janitor_\w+(\{\w+="\w+"\})?', name), line
        samples[name] = float(value)
    assert samples["registry_janitor_tags_deleted_total"] == 7
    assert samples["registry_janitor_repositories"] == 5
    assert samples["registry_janitor_bytes_reclaimed_total"] > 0
    assert samples["registry_janitor_last_run_success"] == 1
    assert samples["registry_janitor_last_success_timestamp_seconds"] > time.time() - 300
    assert samples['registry_janitor_sweeps_total{result="success"}'] == 1
    assert not list(scenario.metrics.parent.glob(".janitor.prom.*"))  # no temp file left


def test_second_concurrent_sweep_is_refused(scenario: Scenario) -> None:
    from registry_janitor.lock import SweepLock

    reg = scenario.registry
    with SweepLock(reg.store.lock_file):
        before = reg.store.fingerprint()  # the holder has written its name into the lock file
        result = janitor.run(reg, "--keep-last-n", "0")
    assert result.returncode == 1
    assert f"another sweep holds the lock {reg.store.lock_file}" in result.stderr
    assert reg.store.fingerprint() == before


def test_report_lists_every_repository(scenario: Scenario) -> None:
    result = janitor.run(scenario.registry, "--json", command="report")
    assert result.returncode == 0, result.stderr
    rows = {e["repository"]: e for e in janitor.events(result) if e["event"] == "repository"}
    assert set(rows) == {"a", "a/b", "multi", "team/app"}
    assert rows["team/app"]["tags"] == 3 and rows["team/app"]["unique_bytes"] > 0
    assert rows["multi"]["shared_bytes"] > 0  # the base layer
    table = janitor.run(scenario.registry, command="report")
    assert table.stdout.splitlines()[0].split()[:3] == ["REPOSITORY", "TAGS", "MANIFESTS"]


def test_next_sweep_finds_nothing_and_skips_gc(scenario: Scenario) -> None:
    # Runs last in this module: it changes nothing, which is the point.
    result = janitor.run(scenario.registry, *scenario.args)
    assert result.returncode == 0, result.stderr
    if scenario.engine == "registry":
        assert "gc skipped: nothing removed since the last garbage-collect" in result.stderr
    else:
        assert "0 blobs / 0 B reclaimed" in result.stderr
    assert "0 deleted, 0 manifests unlinked" in result.stderr
