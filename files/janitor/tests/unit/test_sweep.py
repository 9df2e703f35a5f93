"""Prune on synthetic trees: reachability, shared digests, leftovers, empty repositories."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_janitor import config
from registry_janitor.output import Output
from registry_janitor.survey import Survey
from registry_janitor.sweep import Janitor, SweepStats
from synthetic import Faulty, Store

NOW = time.time()
OLD = NOW - 86400


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def prune(s: Store, stop: threading.Event | None = None, **flags: object) -> SweepStats:
    # No settle wait: nothing pushes during these tests.
    cfg = config.load({"data_dir": str(s.root), "gc_settle": "0", **flags}, env={})
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


def seen_unreachable_since(s: Store, when: float) -> None:
    """Pretend every entry of the first-seen state file was first seen at `when`."""
    path = s.root / ".registry-janitor.unreachable"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({r: {d: when for d in seen} for r, seen in state.items()}))


def test_overwritten_tag_leaves_its_old_revision_linked_for_a_while(s: Store) -> None:
    """The previous `latest`, pushed long ago, stays pullable by digest for the revision grace
    after the sweep that first saw it unreachable, not just after its own push."""
    first, second = s.image("first"), s.image("second")
    s.revision("r", first)  # pushed two days ago, then `latest` moved on
    s.tag("r", "latest", second, OLD)
    stats = prune(s)
    assert revisions(s, "r") == {first, second}
    assert stats.manifests_unlinked == 0 and stats.manifests_spared == 1
    assert prune(s).manifests_unlinked == 0  # still within the hour since first seen
    seen_unreachable_since(s, NOW - 3601)
    stats = prune(s)
    assert revisions(s, "r") == {second} and stats.manifests_unlinked == 1
    assert json.loads((s.root / ".registry-janitor.unreachable").read_text()) == {}


def test_a_revision_tagged_again_starts_its_wait_over(s: Store) -> None:
    first, second = s.image("first"), s.image("second")
    s.revision("r", first)
    s.tag("r", "latest", second, OLD)
    prune(s)
    seen_unreachable_since(s, NOW - 3601)
    s.tag("r", "again", first, NOW - 10)  # tagged again: reachable, leaves the state
    prune(s, keep_last_n=5)
    assert json.loads((s.root / ".registry-janitor.unreachable").read_text()) == {}


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
    seen_unreachable_since(s, NOW - 7200)  # both first seen unreachable long ago
    prune(s, keep_min_age="1h")
    assert revisions(s, "r") == {young, tagged}  # pushed a minute ago: still waits


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
    # The orphan was never seen unreachable before: spared; the deleted tags' go at once.
    assert stats.tags_deleted == 4 and stats.manifests_unlinked == 4
    assert stats.manifests_spared == 1 and stats.leftovers_removed == 1


def test_stop_before_start_touches_nothing(s: Store) -> None:
    for i in range(5):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    stop = threading.Event()
    stop.set()
    stats = prune(s, stop=stop, keep_last_n=1)
    assert len(tags(s, "r")) == 5 and stats.stopped


def test_interrupted_tag_deletion_is_never_half_visible(s: Store) -> None:
    """Where a rename is impossible, current/link goes first: a tag dir is either complete or
    has no link."""
    from registry_janitor import executor, store

    img = s.image("x")
    s.tag("r", "t", img, OLD)
    s.tag("r", "keep", s.image("y"), OLD + 10)
    (repo,) = store.scan(Survey(s.storage))
    calls: list[str] = []

    def watch(method: str, args: tuple[object, ...]) -> None:
        if method == "delete":
            calls.append(str(args[0]))

    no_rename = Faulty(s.storage, before=watch, fail_all={"move": OSError(errno.EXDEV, "x")})
    assert executor.delete_tag(no_rename, repo, "t")  # type: ignore[arg-type]
    tag = f"{repo.path}/_manifests/tags/t"
    assert calls == [f"{tag}/current/link", tag] and tags(s, "r") == {"keep"}


def test_stop_mid_sweep_finishes_the_current_tag_and_starts_no_other(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_janitor import executor

    for i in range(20):
        s.tag("r", f"t{i:02}", s.image(str(i)), OLD + i)
    stop = threading.Event()
    real = executor.delete_tag
    done: list[str] = []

    def delete_then_signal(storage: object, repo: object, tag: str, *args: object) -> bool:
        result = real(storage, repo, tag, *args)  # type: ignore[arg-type]
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
    (repo,) = store.scan(Survey(s.storage))
    target = s.storage if use_trash else Faulty(s.storage, fail_all={"move": OSError(18, "x")})
    executor.delete_tag(target, repo, "t")  # type: ignore[arg-type]
    assert (victim / "link").read_text() == "precious"
    assert tags(s, "r") == set()


def test_a_failed_deletion_fails_the_sweep_and_the_rest_goes_on(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_janitor import executor

    for i in range(4):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    real = executor.delete_tag

    def flaky(storage: object, repo: object, tag: str, *args: object) -> bool:
        if tag == "t1":
            raise OSError(5, "Input/output error")
        return real(storage, repo, tag, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(executor, "delete_tag", flaky)
    stats = prune(s, keep_last_n=1)
    assert stats.errors == 1 and not stats.ok
    assert tags(s, "r") == {"t3", "t1"} and stats.tags_deleted == 2
    # The tag that could not be deleted still points at its manifest: it stays linked.
    link = s.repositories / "r" / "_manifests" / "tags" / "t1" / "current" / "link"
    assert link.read_text() in revisions(s, "r") and stats.manifests_unlinked == 2


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
    (repo,) = store.scan(Survey(s.storage))
    seen: list[set[str]] = []

    def watch(method: str, args: tuple[object, ...]) -> None:
        if method == "delete":  # the trash entry: the registry must no longer see the tag
            assert str(args[0]).startswith(".registry-janitor-trash/")
            seen.append(tags(s, "r"))

    executor.delete_tag(Faulty(s.storage, before=watch), repo, "t")  # type: ignore[arg-type]
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
    from registry_janitor import plan

    old_img, new_img = s.image("old"), s.image("new")
    s.tag("r", "pr-1", old_img, OLD)
    s.tag("r", "main", new_img, OLD + 10)
    real_plan = plan.plan_all

    def plan_then_push(*args: object, **kwargs: object) -> list[plan.RepoPlan]:
        plans = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        # CI pushes pr-1 again after the scan decided to delete it.
        link = s.repositories / "r" / "_manifests" / "tags" / "pr-1" / "current" / "link"
        os.utime(link, (NOW, NOW))
        rev = s.repositories / "r" / "_manifests" / "revisions" / "sha256" / old_img[7:] / "link"
        os.utime(rev, (NOW, NOW))
        return plans

    monkeypatch.setattr(plan, "plan_all", plan_then_push)
    stats = prune(s, keep_last_n=1)
    assert tags(s, "r") == {"pr-1", "main"} and revisions(s, "r") == {old_img, new_img}
    assert stats.tags_deleted == 0 and stats.manifests_unlinked == 0 and stats.ok
