"""The pull record on the share: fed from the registry's log, resumed, never half written."""

from __future__ import annotations

from pathlib import Path

from registry_janitor import manifests, pulls, store
from registry_janitor.records import Repository
from registry_janitor.registry_log import RegistryLog
from registry_janitor.survey import Survey
from synthetic import Store

LINE = (
    'time="2026-12-07T01:00:{s:02}Z" level=info msg="response completed"'
    ' http.request.method={m} http.request.uri="/v2/{repo}/manifests/{ref}"'
    " http.response.status=200\n"
)
T0 = 1_796_605_200.0  # 2026-12-07T01:00:00Z


def line(s: int, repo: str, ref: str, method: str = "GET") -> str:
    return LINE.format(s=s, m=method, repo=repo, ref=ref)


def feed(s: Store, log: Path, now: float) -> pulls.Feed:
    reader = RegistryLog(log, pulls=True)
    try:
        return pulls.read_feed(s.storage, reader, now)
    finally:
        reader.close()


def test_the_record_resumes_where_the_last_run_stopped(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    log = tmp_path / "registry.log"
    log.write_text(line(0, "ci/app", "b1") + line(1, "ci/app", "b1", "HEAD"))
    first = feed(s, log, T0 + 100)
    assert first.current and first.gap  # no record before: starts at the log's first line
    assert first.covered_since == T0 + 1
    pulls.save(s.storage, first.record)
    with log.open("a") as f:
        f.write(line(5, "ci/app", "b2"))
    second = feed(s, log, T0 + 200)
    assert second.current and not second.gap and second.covered_since == T0 + 1
    assert second.record.pulls == {"ci/app": {"b1": (T0, T0 + 1), "b2": (T0 + 5, 0.0)}}
    assert [p.reference for p in second.read] == ["b2"]  # only what is new
    assert pulls.counts_by_repository(second.read) == {"ci/app": {"GET": 1}}


def test_a_record_that_cannot_be_parsed_is_not_used_nor_overwritten(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    log = tmp_path / "registry.log"
    log.write_text(line(0, "a", "x"))
    (s.root / pulls.PULLS_FILE).write_text('{"version": 1, "pulls": {"a": {"x": [1')
    got = feed(s, log, T0 + 10)
    assert not got.current and got.covered_since is None
    assert "not a pull record" in got.gap


def test_no_log_or_an_unreadable_one_leaves_the_run_without_coverage(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    got = pulls.read_feed(s.storage, None, T0)
    assert not got.current and got.covered_since is None
    got = feed(s, tmp_path / "missing.log", T0)
    assert not got.current and "cannot read the registry's log" in got.gap


def test_a_pull_by_digest_of_an_index_child_counts_for_the_index_tag(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    amd, arm = s.image("amd"), s.image("arm")
    index = s.index([amd, arm])
    for d in (amd, arm):
        s.revision("ci/multi", d)
    s.tag("ci/multi", "m1", index, T0 - 86400)
    s.tag("ci/multi", "other", s.image("other"), T0 - 86400)
    [repo] = store.scan(Survey(s.storage))
    record = pulls.Record(
        pulls={"ci/multi": {arm: (0.0, T0 + 7), "other": (T0 + 3, 0.0)}}, covered_since=T0
    )
    reader = manifests.ManifestReader(s.storage)
    with_head, _ = pulls.tag_pulls(repo, record, count_head=True, reader=reader)
    assert with_head == {"m1": T0 + 7, "other": T0 + 3}
    without, _ = pulls.tag_pulls(repo, record, count_head=False, reader=reader)
    assert without == {"other": T0 + 3}  # the child was only HEADed


def test_forget_drops_what_the_store_no_longer_has_but_not_a_fresh_pull() -> None:
    record = pulls.Record(pulls={"a": {"x": (5.0, 0.0), "gone": (5.0, 0.0), "new": (50.0, 0)}})
    record.pulls["vanished"] = {"t": (1.0, 1.0)}
    pulls.forget(record, [Repository("a", tags=())], before=10.0)
    assert record.pulls == {"a": {"new": (50.0, 0)}}
