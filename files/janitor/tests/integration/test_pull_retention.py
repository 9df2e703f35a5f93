"""Retention by pull against a real registry: skopeo and plain HTTP clients pull, the
registry writes its log (info level), the janitor reads it into the pull record on the store
and keeps what was pulled.

The record must cover a day before a one-day rule may delete on pull grounds; a registry
started a second ago has not. So after the first run wrote the record, the tests date its
start two days back (as other tests date pushes back by mtime): the record then says "every
pull of the last two days is here", which is what a janitor running for two days would have.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import janitor
import oci
import pytest
from registry import Registry, pull, push, skopeo
from registry_janitor.pulls import PULLS_FILE
from registry_janitor.registry_log import RegistryLog
from stores import Store, store_factory

NOW = time.time()
DAY = 86400
POLICY = '[[rules]]\nmatch = "app"\nkeep_pulled_within = "1d"\n'
# What a docker or skopeo client accepts: both manifest formats, images and indexes.
MANIFEST_TYPES = (
    f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX},"
    " application/vnd.docker.distribution.manifest.v2+json,"
    " application/vnd.docker.distribution.manifest.list.v2+json"
)


def head_manifest(reg: Registry, repo: str, ref: str) -> int:
    """What CI does to check that an image exists."""
    req = urllib.request.Request(f"http://{reg.host}/v2/{repo}/manifests/{ref}", method="HEAD")
    req.add_header("Accept", MANIFEST_TYPES)
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


def sweep(reg: Registry, tmp: Path, *args: str, command: str = "sweep") -> list[dict[str, Any]]:
    policy = tmp / "policy.toml"
    if not policy.exists():
        policy.write_text(POLICY)
    result = janitor.run(
        reg,
        "--json",
        "--keep-last-n", "1",
        "--policy-file", str(policy),
        "--registry-log", str(reg.log),
        *args,
        command=command,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return janitor.events(result)


def deleted(events: list[dict[str, Any]]) -> set[str]:
    return {e["tag"] for e in events if e["event"] == "tag_deleted"}


def push_old_tags(reg: Registry, layout_dir: Path, count: int) -> None:
    """app:b0, b1, ... (one image each), pushed five days ago a second apart."""
    layout = oci.Layout(layout_dir)
    for i in range(count):
        layout.tag(f"b{i}", layout.image([layout.layer({f"{i}": b"x"})], label=str(i)))
        push(layout.path, f"b{i}", reg, f"app:b{i}")
        reg.set_push_time(f"app:b{i}", time.time() - 5 * DAY + i)


def start_record(reg: Registry, tmp: Path, covered_for: float = 2 * DAY) -> None:
    """The first run writes the record; then it is dated as if it had run for two days."""
    sweep(reg, tmp, "--keep-last-n", "100", command="prune")
    doc = json.loads(reg.store.read(PULLS_FILE))
    doc["covered_since"] = time.time() - covered_for
    reg.store.write(PULLS_FILE, json.dumps(doc).encode())


@dataclass
class Pulled:
    registry: Registry
    workdir: Path
    layout: oci.Layout
    child: str  # the index child pulled by digest


@pytest.fixture(scope="module")
def pulled(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pulled]:
    """app: old3 never pulled, old2 only HEADed, old1 pulled by tag, multi (an index) pulled
    only as its arm64 child by digest, new the newest push. All pushed days ago."""
    backend = request.param
    work = tmp_path_factory.mktemp(f"pulls-{backend}")
    store: Store | None = store_factory(backend, request)("pulls")
    reg = Registry(work / "registry", store=store, log_level="info")
    reg.start()
    try:
        layout = oci.Layout(work / "layout")
        base = layout.layer({"etc/os-release": b"ID=test\n"})

        def image(label: str, arch: str = "amd64") -> oci.Descriptor:
            return layout.image(
                [base, layout.layer({f"{label}.txt": label.encode()})], arch=arch, label=label
            )

        arm = image("multi-arm", "arm64")
        for name, desc in {
            "old3": image("old3"),
            "old2": image("old2"),
            "old1": image("old1"),
            "multi": layout.index([image("multi-amd"), arm]),
            "new": image("new"),
        }.items():
            layout.tag(name, desc)
            push(layout.path, name, reg, f"app:{name}", multi=name == "multi")
        for i, name in enumerate(("old3", "old2", "old1", "multi", "new")):
            reg.set_push_time(f"app:{name}", NOW - 5 * DAY + i * 3600)
        start_record(reg, work)
        assert pull(reg, "app:old1", work / "pulled-old1").returncode == 0
        assert head_manifest(reg, "app", "old2") == 200
        skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{reg.host}/app@{arm['digest']}")
        yield Pulled(reg, work, layout, arm["digest"])
    finally:
        reg.stop()


BACKEND = pytest.mark.parametrize("pulled", ["filesystem", "s3"], indirect=True)


@BACKEND
def test_head_counts_as_a_pull_unless_configured_off(pulled: Pulled) -> None:
    reg, work = pulled.registry, pulled.workdir
    counted = sweep(reg, work, "--dry-run")
    assert deleted(counted) == {"old3"}
    off = work / "head-off.toml"
    off.write_text(POLICY + "count_head_as_pull = false\n")
    not_counted = sweep(reg, work, "--dry-run", "--policy-file", str(off))
    assert deleted(not_counted) == {"old3", "old2"}
    assert not any(e["event"] == "pull_record_short" for e in counted + not_counted)


@BACKEND
def test_report_shows_each_tags_last_push_and_last_pull(pulled: Pulled) -> None:
    events = sweep(pulled.registry, pulled.workdir, command="report")
    tags = {e["tag"]: e for e in events if e["event"] == "tag"}
    assert set(tags) == {"old3", "old2", "old1", "multi", "new"}
    assert tags["old3"]["last_pull"] is None and tags["new"]["last_pull"] is None
    for name in ("old2", "old1", "multi"):  # HEAD, by tag, a child by digest
        assert tags[name]["last_pull"] >= time.strftime("%Y-%m-%dT", time.gmtime(NOW))
    assert tags["old3"]["last_push"] < tags["old2"]["last_push"]


@BACKEND
def test_a_tag_pulled_within_a_day_survives_keep_last_n_1(pulled: Pulled) -> None:
    """The real sweep, last in this module: old3 goes, everything pulled stays and pulls
    completely (the index with every child)."""
    reg, work = pulled.registry, pulled.workdir
    metrics = work / "metrics.prom"
    events = sweep(reg, work, "--metrics-file", str(metrics))
    assert deleted(events) == {"old3"}
    assert reg.tags("app") == ["multi", "new", "old1", "old2"]
    for name in ("old1", "old2", "new"):
        assert pull(reg, f"app:{name}", work / f"after-{name}").returncode == 0
    result = pull(reg, "app:multi", work / "after-multi", multi=True)
    assert result.returncode == 0, result.stderr
    text = metrics.read_text()
    assert 'registry_janitor_manifest_pulls_total{repository="app",method="HEAD"} 1' in text
    [coverage] = [
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("registry_janitor_pull_record_coverage_seconds ")
    ]
    assert 2 * DAY <= coverage < 2 * DAY + 3600


def _make_gap(reg: Registry, how: str) -> None:
    log = reg.log
    if how == "rotated":  # logrotate copytruncate: the .1 copy holds what was not read yet
        (log.parent / (log.name + ".1")).write_bytes(log.read_bytes())
        with log.open("r+") as f:
            f.truncate(0)
    elif how == "rotated past unread lines":  # two rotations between runs: .1 is newer
        with log.open("r+") as f:
            f.truncate(0)
    elif how == "missing":
        log.unlink()
    urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=5).close()  # a line after it


@pytest.mark.parametrize("how", ["rotated", "rotated past unread lines", "missing"])
def test_a_gap_in_the_feed_deletes_nothing_on_pull_grounds(
    tmp_path: Path, how: str, new_store: Callable[[str], Store | None]
) -> None:
    """Nothing was pulled: with the feed intact, keep_last_n=1 deletes b1 and b2 although a
    pull rule is set (the record covers the day). With lines lost, or the log gone, the
    janitor cannot know that nobody pulled them: both stay, and it says so once."""
    reg = Registry(tmp_path / "registry", store=new_store("gap"), log_level="info")
    reg.start()
    try:
        push_old_tags(reg, tmp_path / "layout", 3)
        start_record(reg, tmp_path)
        urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=5).close()  # not read yet
        _make_gap(reg, how)
        events = sweep(reg, tmp_path)
        short = [e for e in events if e["event"] == "pull_record_short"]
        if how == "rotated":
            assert deleted(events) == {"b0", "b1"} and short == []
        else:
            assert deleted(events) == set(), events
            assert len(short) == 1 and short[0]["tags"] == 2, short
        assert reg.tags("app") == (["b2"] if how == "rotated" else ["b0", "b1", "b2"])
    finally:
        reg.stop()


def test_without_the_feature_the_same_store_loses_the_pulled_tags(tmp_path: Path) -> None:
    """The baseline the tests above improve on: keep_last_n=1 alone deletes every pulled
    tag but the newest (so a janitor without pull rules fails the tests above)."""
    reg = Registry(tmp_path / "registry", log_level="info")
    reg.start()
    try:
        push_old_tags(reg, tmp_path / "layout", 2)
        assert pull(reg, "app:b0", tmp_path / "p").returncode == 0
        result = janitor.run(reg, "--json", "--keep-last-n", "1", command="prune")
        assert deleted(janitor.events(result)) == {"b0"}
    finally:
        reg.stop()


@pytest.mark.parametrize("formatter", ["text", "json"])
def test_pulls_in_both_of_the_registrys_log_formats(tmp_path: Path, formatter: str) -> None:
    """The registry's own lines: a pull by tag (skopeo's GET), a HEAD by digest; not the
    push, not a HEAD of a tag that does not exist."""
    reg = Registry(tmp_path / "registry", log_level="info", log_formatter=formatter)
    reg.start()
    try:
        layout = oci.Layout(tmp_path / "layout")
        desc = layout.image([layout.layer({"f": b"x"})], label="fmt")
        layout.tag("v1", desc)
        push(layout.path, "v1", reg, "team/app:v1")
        assert pull(reg, "team/app:v1", tmp_path / "p").returncode == 0
        assert head_manifest(reg, "team/app", desc["digest"]) == 200
        with pytest.raises(urllib.error.HTTPError):
            head_manifest(reg, "team/app", "nope")
        reader = RegistryLog(reg.log, pulls=True)
        reader.read_since(None)
        reader.close()
        got = {(p.repository, p.reference, p.head) for p in reader.pulls}
        assert ("team/app", "v1", False) in got
        assert ("team/app", desc["digest"], True) in got
        assert not any(ref == "nope" for _, ref, _ in got)
        assert all(abs(p.when - time.time()) < 300 for p in reader.pulls)  # the log's times
    finally:
        reg.stop()
