"""GC output parsing, the blob-descriptor check, metrics rendering and the usage report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from registry_janitor import html_report, manifests, metrics, registry_gc, report, store
from registry_janitor.records import SweepStats
from registry_janitor.survey import Survey
from synthetic import Store

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_gc_collects_the_digests_it_deleted(tmp_path: Path) -> None:
    fake = tmp_path / "registry"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "repo: marking manifest sha256:abc"\n'
        'echo "2 blobs marked, 2 blobs and 0 manifests eligible for deletion"\n'
        f'echo "blob eligible for deletion: {D1}"\n'
        f'echo "blob eligible for deletion: {D2}" >&2\n'
    )
    fake.chmod(0o755)
    result = registry_gc.run(str(fake), tmp_path / "config.yml")
    assert result.ok and result.deleted == (D1, D2)


def test_gc_missing_binary_and_failure(tmp_path: Path) -> None:
    missing = registry_gc.run(str(tmp_path / "nope"), tmp_path / "config.yml")
    assert not missing.ok and "registry binary not found" in missing.message
    fake = tmp_path / "registry"
    fake.write_text("#!/bin/sh\necho 'configuration error' >&2\nexit 1\n")
    fake.chmod(0o755)
    failed = registry_gc.run(str(fake), tmp_path / "config.yml")
    assert not failed.ok and failed.message == "garbage-collect exited 1: configuration error"


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        ("storage:\n  cache:\n    blobdescriptor: inmemory\n", True),
        ("storage:\n  cache:\n    blobdescriptor: redis  # shared\n", True),
        ('storage:\n  cache:\n    blobdescriptor: "inmemory"\n', True),
        ("storage:\n  # cache:\n  #   blobdescriptor: inmemory\n", False),
        ('storage:\n  cache:\n    blobdescriptor: ""\n', False),
        ("storage:\n  cache:\n    blobdescriptor: null\n", False),
        ("storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n", False),
    ],
)
def test_blobdescriptor_check(text: str, enabled: bool) -> None:
    assert registry_gc.config_enables_blobdescriptor(text) is enabled


def test_metrics_counters_carry_over_and_gauges_do_not(tmp_path: Path) -> None:
    path = tmp_path / "janitor.prom"
    first = SweepStats(repositories=3, tags_seen=30, tags_deleted=5, bytes_reclaimed=1000)
    metrics.write(path, first, now=1000.0)
    failed = SweepStats(repositories=3, tags_seen=25, tags_deleted=2, errors=1)
    metrics.write(path, failed, now=2000.0)
    values = metrics.read_previous(path)
    assert values["registry_janitor_tags_deleted_total"] == 7
    assert values["registry_janitor_bytes_reclaimed_total"] == 1000
    assert values["registry_janitor_tags"] == 25
    assert values["registry_janitor_last_run_timestamp_seconds"] == 2000
    assert values["registry_janitor_last_success_timestamp_seconds"] == 1000
    assert values["registry_janitor_last_run_success"] == 0
    assert values['registry_janitor_sweeps_total{result="success"}'] == 1
    assert values['registry_janitor_sweeps_total{result="failure"}'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["janitor.prom"]


def test_gc_outcome_is_kept_by_runs_that_do_not_collect(tmp_path: Path) -> None:
    """The registry engine's `prune` and `gc` are separate runs: a prune must not hide the
    last GC's failure (the alert on registry_janitor_gc_ok would clear and fire in turn)."""
    path = tmp_path / "janitor.prom"
    metrics.write(path, SweepStats(), now=1.0)
    assert metrics.read_previous(path)['registry_janitor_gc_ok{reason="not_run"}'] == 1
    failed = SweepStats(gc_ran=True, gc_ok=False, gc_reason="garbage_collect_failed")
    metrics.write(path, failed, now=2.0, command="gc")
    metrics.write(path, SweepStats(command="prune"), now=3.0, command="prune")
    values = metrics.read_previous(path)
    assert values['registry_janitor_gc_ok{reason="garbage_collect_failed"}'] == 0
    assert [k for k in values if "gc_ok" in k] == [
        'registry_janitor_gc_ok{reason="garbage_collect_failed"}'
    ]
    metrics.write(path, SweepStats(gc_ran=True, gc_reason="collected"), now=4.0, command="gc")
    assert [k for k in metrics.read_previous(path) if "gc_ok" in k] == [
        'registry_janitor_gc_ok{reason="collected"}'
    ]


def test_undelivered_notifications_are_shown_only_where_the_janitor_asks(tmp_path: Path) -> None:
    """Absent without notifications (no alert can fire on a series that is not there),
    the count or -1 with them, and kept through a separate `gc`, which does not ask."""
    path = tmp_path / "janitor.prom"
    name = "registry_janitor_notifications_undelivered"
    metrics.write(path, SweepStats(), now=1.0)
    assert name not in metrics.read_previous(path)
    metrics.write(path, SweepStats(notifications_undelivered=4), now=2.0)
    assert metrics.read_previous(path)[name] == 4
    metrics.write(path, SweepStats(gc_ran=True), now=3.0, command="gc")
    assert metrics.read_previous(path)[name] == 4
    metrics.write(path, SweepStats(notifications_undelivered=-1), now=4.0)
    assert metrics.read_previous(path)[name] == -1


def test_usage_splits_unique_and_shared_bytes(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    now = time.time()
    shared_image = s.image("same")  # in both repositories: everything of it is shared
    s.tag("one", "a", shared_image, now - 100)
    s.tag("two", "a", shared_image, now - 50)
    s.tag("one", "b", s.image("only-one"), now)
    repos = store.scan(Survey(s.storage))
    rows = {u.repository: u for u in report.usage(repos, manifests.ManifestReader(s.storage))}
    one, two = rows["one"], rows["two"]
    assert (one.tags, one.manifests) == (2, 2)
    assert one.newest_push == now and one.oldest_push == now - 100
    # The synthetic descriptors say 10 bytes per config and 4 per layer; the shared base
    # layer of "only-one" is shared too.
    assert two.unique_bytes == 0 and two.shared_bytes > 0
    assert one.unique_bytes > 0 and one.shared_bytes == two.shared_bytes


def test_the_html_report_escapes_every_name_from_the_store() -> None:
    """A registry restricts names, but a store on a share can hold any directory name: the
    page must show it as text, never as markup."""
    evil = '<img src=x onerror="alert(1)">&'
    page = html_report.Page(
        store=f"/srv/{evil}",
        generated=0.0,
        usage=[report.RepoUsage(evil, 1, 1, 1.0, 1.0, 10, 0)],
        tag_ages=[(evil, evil, 5.0)],
        deletions=[html_report.Deletion(evil, evil, "tag", evil)],
        history=[{"time": 1.0, "gc_ran": True, "gc_reason": evil, "bytes_reclaimed": 3}],
        fill=(100, 40),
        gaps=[evil],
    )
    text = html_report.render(page)
    assert "<img" not in text and 'onerror="' not in text
    assert text.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;") >= 9
