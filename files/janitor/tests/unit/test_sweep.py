"""Prune on synthetic trees: reachability, shared digests, leftovers, empty repositories."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_janitor import config
from registry_janitor.output import Output
from registry_janitor.sweep import Janitor, SweepStats
from synthetic import Store

NOW = time.time()
OLD = NOW - 86400


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def prune(s: Store, stop: threading.Event | None = None, **flags: object) -> SweepStats:
    cfg = config.load({"data_dir": str(s.root), **flags}, env={})
    with ThreadPoolExecutor(4) as pool, open(os.devnull, "w") as sink:
        j = Janitor(cfg, Output(as_json=True, stream=sink), pool, stop)
        return j.sweep(run_prune=True, run_gc=False)


def tags(s: Store, repo: str) -> set[str]:
    d = s.repositories / repo / "_manifests" / "tags"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def revisions(s: Store, repo: str) -> set[str]:
    d = s.repositories / repo / "_manifests" / "revisions" / "sha256"
    return {"sha256:" + p.name for p in d.iterdir()} if d.exists() else set()


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            h.update(f"{p} {st.st_mode} {st.st_size} {st.st_mtime_ns}\n".encode())
            if os.path.isfile(p) and not os.path.islink(p):
                h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_index_children_and_attestations_stay_reachable(s: Store) -> None:
    amd, arm, att1, att2 = (s.image(x) for x in ("amd", "arm", "att1", "att2"))
    idx = s.index([amd, arm, att1, att2])
    old_amd, old_att = s.image("old-amd"), s.image("old-att")
    old_idx = s.index([old_amd, old_att])
    for child in (amd, arm, att1, att2, old_amd, old_att):
        s.revision("multi", child)
    s.tag("multi", "new", idx, OLD + 10)
    s.tag("multi", "old", old_idx, OLD)
    stats = prune(s, keep_last_n=1)
    assert tags(s, "multi") == {"new"}
    assert revisions(s, "multi") == {idx, amd, arm, att1, att2}
    assert stats.tags_deleted == 1 and stats.manifests_unlinked == 3


def test_nested_index_is_followed_recursively(s: Store) -> None:
    leaf = s.image("leaf")
    inner = s.index([leaf])
    outer = s.index([inner])
    for d in (leaf, inner):
        s.revision("r", d)
    s.tag("r", "t", outer, OLD)
    prune(s, keep_last_n=1)
    assert revisions(s, "r") == {outer, inner, leaf}


def test_shared_digest_survives_deleting_one_of_its_tags(s: Store) -> None:
    img, other = s.image("shared"), s.image("other")
    s.tag("r", "old-name", img, OLD)
    s.tag("r", "middle", other, OLD + 5)
    s.tag("r", "new-name", img, OLD + 10)
    prune(s, keep_last_n=1)
    assert tags(s, "r") == {"new-name"}
    assert revisions(s, "r") == {img}


def test_overwritten_tag_leaves_its_old_revision_unlinked(s: Store) -> None:
    first, second = s.image("first"), s.image("second")
    s.revision("r", first)
    s.tag("r", "latest", second, OLD)
    stats = prune(s)
    assert revisions(s, "r") == {second} and stats.manifests_unlinked == 1


def test_gc_delete_untagged_false_unlinks_nothing(s: Store) -> None:
    first, second = s.image("first"), s.image("second")
    s.revision("r", first)
    s.tag("r", "latest", second, OLD)
    stats = prune(s, gc_delete_untagged=False)
    assert revisions(s, "r") == {first, second} and stats.manifests_unlinked == 0


def test_young_untagged_revision_waits_for_min_age(s: Store) -> None:
    young, old, tagged = s.image("young"), s.image("old"), s.image("tagged")
    s.revision("r", young, mtime=NOW - 60)
    s.revision("r", old, mtime=NOW - 7200)
    s.tag("r", "t", tagged, OLD)
    prune(s, keep_min_age="1h")
    assert revisions(s, "r") == {young, tagged}


def test_unreadable_kept_manifest_blocks_unlinking_in_that_repository(s: Store) -> None:
    missing = "sha256:" + "f" * 64  # tag points at a manifest whose blob is gone
    orphan = s.image("orphan")
    s.revision("r", orphan)
    s.tag("r", "t", missing, OLD)
    stats = prune(s)
    assert revisions(s, "r") == {missing, orphan} and stats.manifests_unlinked == 0


def test_leftover_tag_directories(s: Store) -> None:
    s.tag("r", "ok", s.image("x"), OLD)
    for name, age in (("stale", 7200), ("fresh", 60)):
        d = s.repositories / "r" / "_manifests" / "tags" / name
        d.mkdir()
        os.utime(d, (NOW - age, NOW - age))
    stats = prune(s)
    assert tags(s, "r") == {"ok", "fresh"} and stats.leftovers_removed == 1


def test_empty_repositories_are_removed_but_not_nested_ones(s: Store) -> None:
    img = s.image("x")
    s.tag("a", "t", img, OLD)  # `a` empties, `a/b` lives inside it
    s.tag("a/b", "t", img, OLD)
    s.tag("gone/deep", "t", img, OLD)  # path component `gone` goes with it
    s.tag("busy", "t", img, OLD)
    upload = s.repositories / "busy" / "_uploads" / "some-uuid"
    upload.mkdir(parents=True)
    (upload / "startedat").write_text("now")
    s.age_everything(OLD)
    policy = s.root / "policy.toml"
    policy.write_text('[[rules]]\nmatch = ["a", "gone/**", "busy"]\nkeep_last_n = 0\n')
    stats = prune(s, policy_file=str(policy))
    assert not (s.repositories / "a" / "_manifests").exists()
    assert not (s.repositories / "a" / "_layers").exists()
    assert tags(s, "a/b") == {"t"}
    assert not (s.repositories / "gone").exists()
    assert (s.repositories / "busy" / "_uploads" / "some-uuid").is_dir()
    assert (s.repositories / "busy" / "_manifests").is_dir()  # an upload is in progress
    assert stats.repositories_removed == 2


def test_recently_used_empty_repository_waits(s: Store) -> None:
    s.tag("r", "t", s.image("x"), OLD)  # _layers/sha256 mtime is now: a push may be running
    prune(s, keep_last_n=0)
    assert (s.repositories / "r" / "_layers").is_dir()
    assert tags(s, "r") == set() and revisions(s, "r") == set()


def test_dry_run_changes_nothing(s: Store) -> None:
    for i in range(5):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    s.revision("r", s.image("orphan"))
    (s.repositories / "r" / "_manifests" / "tags" / "stale").mkdir()
    s.age_everything(OLD)
    before = tree_hash(s.root)
    stats = prune(s, keep_last_n=1, dry_run=True)
    assert tree_hash(s.root) == before
    assert stats.tags_deleted == 4 and stats.manifests_unlinked == 5
    assert stats.leftovers_removed == 1


def test_stop_before_start_touches_nothing(s: Store) -> None:
    for i in range(5):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    stop = threading.Event()
    stop.set()
    stats = prune(s, stop=stop, keep_last_n=1)
    assert len(tags(s, "r")) == 5 and stats.stopped


def test_interrupted_tag_deletion_is_never_half_visible(s: Store) -> None:
    """Deleting current/link first: a tag dir is either complete or has no link."""
    img = s.image("x")
    s.tag("r", "t", img, OLD)
    s.tag("r", "keep", s.image("y"), OLD + 10)
    from registry_janitor import executor, store

    (repo,) = store.scan(s.repositories)
    calls: list[str] = []
    real_rmtree = executor.shutil.rmtree

    def rmtree(path: str) -> None:
        calls.append(str(path))
        assert not (Path(path) / "current" / "link").exists() or "revisions" in str(path)
        real_rmtree(path)

    executor.shutil.rmtree = rmtree  # type: ignore[assignment]
    try:
        executor.delete_tag(repo, "t")
    finally:
        executor.shutil.rmtree = real_rmtree
    assert calls and tags(s, "r") == {"keep"}


def test_stop_mid_sweep_finishes_the_current_tag_and_starts_no_other(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_janitor import executor

    for i in range(20):
        s.tag("r", f"t{i:02}", s.image(str(i)), OLD + i)
    stop = threading.Event()
    real = executor.delete_tag
    done: list[str] = []

    def delete_then_signal(repo: object, tag: str, *args: object) -> bool:
        result = real(repo, tag, *args)  # type: ignore[arg-type]
        done.append(tag)
        stop.set()  # as the SIGTERM handler does
        return result

    monkeypatch.setattr(executor, "delete_tag", delete_then_signal)
    stats = prune(s, stop=stop, keep_last_n=1)
    assert stats.stopped and stats.manifests_unlinked == 0
    left = tags(s, "r")
    assert len(left) == 20 - len(done) and 1 <= len(done) <= 4  # at most one per worker
    for name in left:  # every remaining tag is whole
        assert (s.repositories / "r" / "_manifests" / "tags" / name / "current" / "link").is_file()


@pytest.mark.parametrize("use_trash", [True, False], ids=["trash", "no-trash"])
def test_deleting_a_tag_never_follows_a_planted_symlink(
    s: Store, tmp_path: Path, use_trash: bool
) -> None:
    from registry_janitor import executor, store

    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "link").write_text("precious")
    s.tag("r", "t", s.image("x"), OLD)
    current = s.repositories / "r" / "_manifests" / "tags" / "t" / "current"
    shutil.rmtree(current)
    os.symlink(victim, current)
    (repo,) = store.scan(s.repositories)
    trash = s.root / "trash"
    trash.mkdir()
    executor.delete_tag(repo, "t", trash if use_trash else None)
    assert (victim / "link").read_text() == "precious"
    assert tags(s, "r") == set()


def test_a_failed_deletion_fails_the_sweep_and_the_rest_goes_on(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_janitor import executor

    for i in range(4):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    real = executor.delete_tag

    def flaky(repo: object, tag: str, *args: object) -> bool:
        if tag == "t1":
            raise OSError(5, "Input/output error")
        return real(repo, tag, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(executor, "delete_tag", flaky)
    stats = prune(s, keep_last_n=1)
    assert stats.errors == 1 and not stats.ok
    assert tags(s, "r") == {"t3", "t1"} and stats.tags_deleted == 2


def test_unusual_but_valid_names(s: Store) -> None:
    long_tag = "t" + "x" * 127  # the registry's maximum, 128 characters
    deep = "/".join(f"level{i}" for i in range(10)) + "/my_app.v2-x"
    img, old = s.image("x"), s.image("old")
    for repo in (deep, "a__b/c.d-e"):
        s.tag(repo, long_tag, img, OLD + 10)
        s.tag(repo, "_starts.with-underscore", img, OLD + 5)  # a valid tag, not a registry dir
        s.tag(repo, "1.0.0", old, OLD)
    stats = prune(s, keep_last_n=2)
    assert stats.repositories == 2 and stats.tags_deleted == 2
    for repo in (deep, "a__b/c.d-e"):
        assert tags(s, repo) == {long_tag, "_starts.with-underscore"}
        assert revisions(s, repo) == {img}


def test_deletions_pass_through_the_trash_and_a_crash_leaves_only_trash(s: Store) -> None:
    from registry_janitor import executor, store

    s.tag("r", "t", s.image("x"), OLD)
    s.tag("r", "keep", s.image("y"), OLD + 10)
    trash = s.root / ".registry-janitor-trash"
    trash.mkdir()
    (repo,) = store.scan(s.repositories)
    seen: list[set[str]] = []
    real_remove = executor.remove_tree

    def remove_tree(name: str, dir_fd: int | None = None) -> None:
        if dir_fd is None:  # the trash entry: the registry must no longer see the tag
            seen.append(tags(s, "r"))
        real_remove(name, dir_fd)

    executor.remove_tree = remove_tree  # type: ignore[assignment]
    try:
        executor.delete_tag(repo, "t", trash)
    finally:
        executor.remove_tree = real_remove
    assert seen == [{"keep"}] and list(trash.iterdir()) == []
    # What a crash between rename and delete leaves: trash the next sweep empties.
    (trash / "0123abcd" / "current").mkdir(parents=True)
    prune(s)
    assert list(trash.iterdir()) == []


def test_unreachable_revision_younger_than_an_hour_waits_by_default(s: Store) -> None:
    child, tagged = s.image("child-of-an-index-being-pushed"), s.image("tagged")
    s.revision("r", child, mtime=NOW - 120)
    s.tag("r", "t", tagged, OLD)
    assert prune(s).manifests_unlinked == 0
    assert revisions(s, "r") == {child, tagged}


def test_tag_or_manifest_pushed_again_during_the_sweep_is_kept(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_janitor import sweep

    old_img, new_img = s.image("old"), s.image("new")
    s.tag("r", "pr-1", old_img, OLD)
    s.tag("r", "main", new_img, OLD + 10)
    real_plan = sweep.plan_all

    def plan_then_push(*args: object, **kwargs: object) -> list[sweep.RepoPlan]:
        plans = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        # CI pushes pr-1 again after the scan decided to delete it.
        link = s.repositories / "r" / "_manifests" / "tags" / "pr-1" / "current" / "link"
        os.utime(link, (NOW, NOW))
        rev = s.repositories / "r" / "_manifests" / "revisions" / "sha256" / old_img[7:] / "link"
        os.utime(rev, (NOW, NOW))
        return plans

    monkeypatch.setattr(sweep, "plan_all", plan_then_push)
    stats = prune(s, keep_last_n=1)
    assert tags(s, "r") == {"pr-1", "main"} and revisions(s, "r") == {old_img, new_img}
    assert stats.tags_deleted == 0 and stats.manifests_unlinked == 0 and stats.ok
