"""The store reader on synthetic trees."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_janitor import store
from registry_janitor.storage import REPOSITORIES, FilesystemStorage
from registry_janitor.survey import Survey
from synthetic import Faulty, Store

NOW = 1_800_000_000.0


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path)


@pytest.fixture(params=[None, 4], ids=["serial", "threads"])
def pool(request: pytest.FixtureRequest) -> object:
    if request.param is None:
        yield None
    else:
        with ThreadPoolExecutor(request.param) as p:
            yield p


def test_finds_nested_repositories_and_a_repository_inside_another(s: Store, pool: object) -> None:
    img = s.image("x")
    for name in ("a", "a/b", "team/app", "team/sub/deep", "plain"):
        s.tag(name, "latest", img, NOW)
    repos = store.scan(Survey(s.storage), pool)  # type: ignore[arg-type]
    assert [r.name for r in repos] == ["a", "a/b", "plain", "team/app", "team/sub/deep"]
    by_name = {r.name: r for r in repos}
    assert all(r.has_manifests and r.complete for r in repos)
    assert by_name["a/b"].tags[0].digest == img
    assert by_name["a"].revisions == frozenset({img})


def test_reads_tags_with_digest_and_push_time(s: Store) -> None:
    one, two = s.image("1"), s.image("2")
    s.tag("r", "v1", one, NOW - 50)
    s.tag("r", "v2", two, NOW - 10)
    s.revision("r", s.image("orphan"))
    (repo,) = store.scan(Survey(s.storage))
    tags = {t.name: t for t in repo.tags}
    assert tags["v1"].digest == one and tags["v1"].mtime == NOW - 50
    assert tags["v2"].digest == two and tags["v2"].mtime == NOW - 10
    assert len(repo.revisions) == 3 and repo.complete


def test_tag_without_current_link_has_no_digest(s: Store) -> None:
    s.tag("r", "ok", s.image("1"), NOW)
    broken = s.repo("r") / "_manifests" / "tags" / "broken"
    broken.mkdir()
    os.utime(broken, (NOW - 7200, NOW - 7200))
    garbage = s.repo("r") / "_manifests" / "tags" / "garbage" / "current"
    garbage.mkdir(parents=True)
    (garbage / "link").write_text("not a digest")
    tags = {t.name: t for t in store.scan(Survey(s.storage))[0].tags}
    assert tags["broken"].digest is None and tags["broken"].mtime == NOW - 7200
    assert tags["garbage"].digest is None


def test_skips_registry_directories_and_does_not_follow_symlinks(
    s: Store, tmp_path: Path, pool: object
) -> None:
    img = s.image("x")
    s.tag("real", "t", img, NOW)
    outside = Store(tmp_path / "elsewhere")
    outside.tag("victim", "t", img, NOW)
    # A symlinked repository, a symlinked tag and a symlinked current/link are never followed,
    # and each is a gap: the registry follows links, so what is behind one may be in use.
    os.symlink(outside.repositories / "victim", s.repositories / "linked")
    os.symlink(
        outside.repositories / "victim" / "_manifests" / "tags" / "t",
        s.repo("real") / "_manifests" / "tags" / "via-symlink",
    )
    fake = s.repo("real") / "_manifests" / "tags" / "fake-link" / "current"
    fake.mkdir(parents=True)
    os.symlink(
        outside.repositories / "victim" / "_manifests" / "tags" / "t" / "current" / "link",
        fake / "link",
    )
    # `_uploads` and other `_` directories are not repositories even with _manifests inside.
    (s.repositories / "real" / "_uploads" / "x" / "_manifests").mkdir(parents=True)
    survey = Survey(s.storage)
    repos = store.scan(survey, pool)  # type: ignore[arg-type]
    assert [r.name for r in repos] == ["real"]
    tags = {t.name: t.digest for t in repos[0].tags}
    assert tags == {"t": img}
    assert repos[0].uploads == 1
    base = f"{REPOSITORIES}/real/_manifests/tags"
    assert {g.path for g in survey.gaps} == {
        f"{REPOSITORIES}/linked",
        f"{base}/via-symlink",
        f"{base}/fake-link/current/link",
    }
    assert not repos[0].complete  # so prune leaves it alone, and GC deletes nothing


def test_symlink_loop_does_not_hang(s: Store) -> None:
    s.tag("r", "t", s.image("x"), NOW)
    os.symlink(s.repositories, s.repositories / "loop")
    os.symlink(s.repositories / "r", s.repositories / "r" / "self")
    result: list[list[store.Repository]] = []
    t = threading.Thread(target=lambda: result.append(store.scan(Survey(s.storage))), daemon=True)
    t.start()
    t.join(10)
    assert result and [r.name for r in result[0]] == ["r"]


def test_empty_or_missing_store(tmp_path: Path) -> None:
    assert store.scan(Survey(FilesystemStorage(tmp_path / "nothing"))) == []


def test_unreadable_directory_marks_repository_incomplete(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s.tag("r", "t", s.image("x"), NOW)
    revs = f"{REPOSITORIES}/r/_manifests/revisions/sha256"
    # What a flaky network mount does now and then.
    faulty = Faulty(s.storage, {("list", revs): PermissionError(13, "Permission denied")})
    (repo,) = store.scan(Survey(faulty))  # type: ignore[arg-type]
    assert not repo.complete


def test_unreadable_store_root_fails_instead_of_looking_empty(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. the Storage Box mount went away
    faulty = Faulty(s.storage, {("list", REPOSITORIES): OSError(112, "Host is down")})
    with pytest.raises(OSError, match="Host is down"):
        store.scan(Survey(faulty))  # type: ignore[arg-type]


def test_symlinked_registry_directory_is_not_listed(s: Store, tmp_path: Path) -> None:
    s.tag("r", "t", s.image("x"), NOW)
    elsewhere = Store(tmp_path / "elsewhere")
    elsewhere.tag("victim", "t", s.image("y"), NOW)
    tags_dir = s.repo("r") / "_manifests" / "tags"
    shutil.rmtree(tags_dir)
    os.symlink(elsewhere.repositories / "victim" / "_manifests" / "tags", tags_dir)
    (repo,) = store.scan(Survey(s.storage))
    assert repo.tags == () and not repo.complete  # refused, so nothing here is deleted
