"""Prune must never cost a push, nor fail open when the store answers oddly.

Each test makes the store change (or fail) at an exact point between the plan and an operation,
the way a CI push or a flaky mount would.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_janitor import config, executor, plan
from registry_janitor.hold import Hold
from registry_janitor.output import Output
from registry_janitor.records import SweepStats
from registry_janitor.storage import REPOSITORIES
from registry_janitor.sweep import Janitor
from synthetic import Faulty, Store

NOW = time.time()
OLD = NOW - 86400


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def prune(s: Store, storage: object = None, **flags: object) -> SweepStats:
    cfg = config.load({"data_dir": str(s.root), "gc_settle": "0", **flags}, env={})
    with ThreadPoolExecutor(4) as pool, open(os.devnull, "w") as sink:
        j = Janitor(cfg, Output(as_json=True, stream=sink), pool, threading.Event(), storage)  # type: ignore[arg-type]
        return j.sweep(run_prune=True, run_gc=False)


def push(s: Store, repo: str, tag: str, label: str) -> str:
    """What a push does to the store: blobs, a revision link, a tag."""
    digest = s.image(label)
    s.tag(repo, tag, digest, time.time())
    return digest


def tags(s: Store, repo: str) -> set[str]:
    d = s.repositories / repo / "_manifests" / "tags"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def emptied(s: Store) -> None:
    """`scratch` keeps nothing (max age) and has been quiet for hours: it will be removed."""
    s.tag("scratch", "old", s.image("old"), OLD)
    s.age_everything(OLD)


def test_a_push_after_the_plan_keeps_its_repository(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    emptied(s)
    real = plan.plan_all

    def plan_then_push(*args: object, **kwargs: object) -> list[plan.RepoPlan]:
        plans = real(*args, **kwargs)  # type: ignore[arg-type]
        assert any(p.remove_repository for p in plans)
        push(s, "scratch", "fresh", "fresh")  # CI pushes while the sweep runs
        return plans

    monkeypatch.setattr(plan, "plan_all", plan_then_push)
    stats = prune(s, keep_last_n=0)
    assert tags(s, "scratch") == {"fresh"}
    assert (s.repositories / "scratch" / "_layers").is_dir()
    assert stats.repositories_removed == 0


def test_a_push_between_holding_layers_and_removing_manifests_is_kept(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    emptied(s)
    real = Hold.hold_layers

    def hold_then_push(self: Hold, repo: str) -> bool:
        held = real(self, repo)
        (s.repositories / repo / "_layers" / "sha256").mkdir(parents=True)
        push(s, repo, "fresh", "fresh")  # lands right after `_layers` was held
        return held

    monkeypatch.setattr(Hold, "hold_layers", hold_then_push)
    stats = prune(s, keep_last_n=0)
    assert tags(s, "scratch") == {"fresh"} and stats.repositories_removed == 0
    assert not list((s.root / ".registry-janitor-held" / "layers").iterdir())


def test_a_push_after_the_removal_gets_its_layer_links_back(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest PUT checked its layers before `_layers` was held, and links its revision
    after the repository was removed: the settle puts the held layer links back."""
    emptied(s)
    layer = "sha256:" + "a" * 64
    link = s.repositories / "scratch" / "_layers" / "sha256" / layer[7:] / "link"
    link.parent.mkdir(parents=True)
    link.write_text(layer)
    s.age_everything(OLD)
    real = executor.remove_repository

    def remove_then_push(*args: object) -> bool:
        done = real(*args)  # type: ignore[arg-type]
        assert done
        push(s, "scratch", "fresh", "fresh")
        return done

    monkeypatch.setattr(executor, "remove_repository", remove_then_push)
    stats = prune(s, keep_last_n=0)
    assert stats.repositories_removed == 1 and tags(s, "scratch") == {"fresh"}
    assert link.read_text() == layer  # the push's layer links are back


def test_a_repository_with_only_layers_is_removed_after_a_quiet_hour(s: Store) -> None:
    layers = s.repositories / "refused" / "_layers" / "sha256"
    layers.mkdir(parents=True)
    os.utime(layers, (OLD, OLD))
    young = s.repositories / "pushing" / "_layers" / "sha256"
    young.mkdir(parents=True)  # a first push still uploading its layers
    stats = prune(s)
    assert not (s.repositories / "refused").exists() and young.is_dir()
    assert stats.repositories_removed == 1


def test_a_failing_stat_keeps_the_revision_and_is_reported(s: Store) -> None:
    orphan = s.image("orphan")
    s.revision("r", orphan)
    s.tag("r", "t", s.image("kept"), OLD)
    prune(s)  # first seen unreachable now
    state = s.root / ".registry-janitor.unreachable"
    state.write_text(state.read_text().replace(str(int(NOW))[:5], "1"))  # long ago
    link = f"{REPOSITORIES}/r/_manifests/revisions/sha256/{orphan[7:]}/link"
    faulty = Faulty(s.storage, {("stat", link): PermissionError(13, "Permission denied")})
    stats = prune(s, storage=faulty)
    assert (s.repositories / "r" / "_manifests" / "revisions" / "sha256" / orphan[7:]).is_dir()
    assert stats.errors == 1 and stats.manifests_unlinked == 0


def test_a_leftover_tag_that_got_its_link_back_stays(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s.tag("r", "ok", s.image("x"), OLD)
    stale = s.repositories / "r" / "_manifests" / "tags" / "stale"
    stale.mkdir()
    os.utime(stale, (OLD, OLD))
    real = plan.plan_all

    def plan_then_push(*args: object, **kwargs: object) -> list[plan.RepoPlan]:
        plans = real(*args, **kwargs)  # type: ignore[arg-type]
        push(s, "r", "stale", "now-a-real-tag")  # the crashed push is retried
        return plans

    monkeypatch.setattr(plan, "plan_all", plan_then_push)
    stats = prune(s)
    assert "stale" in tags(s, "r") and stats.leftovers_removed == 0


def revision_linked(s: Store, repo: str, digest: str) -> bool:
    path = s.repositories / repo / "_manifests" / "revisions" / "sha256" / digest[7:] / "link"
    return path.is_file()


@pytest.mark.parametrize("what", ["index reusing a child", "tag of the old index again"])
def test_a_push_during_the_prune_keeps_the_old_manifests_it_reuses(
    s: Store, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """buildx and containerd HEAD an index's children and upload only the missing ones;
    `docker buildx imagetools create` re-tags an old index. A push like that between the
    scan and the unlinks names manifests the plan has already decided to unlink: the prune
    re-reads tags and revisions right before unlinking and keeps what they reach (before:
    the child was unlinked and the new tag answered `manifest unknown`)."""
    child = s.image("amd64")
    sibling = s.image("arm64")
    old_index = s.index([child, sibling])
    s.revision("app", child)
    s.revision("app", sibling)
    s.tag("app", "old", old_index, OLD)
    s.tag("app", "new", s.image("new"), NOW - 60)
    real = Janitor._run_phase
    calls = [0]

    def push_before_unlinks(self: Janitor, ops: list[object], stats: SweepStats) -> object:
        calls[0] += 1
        done = real(self, ops, stats)  # type: ignore[arg-type]
        if calls[0] == 1:  # tags deleted; revisions next: CI pushes right now
            if what == "index reusing a child":
                s.tag("app", "reuse", s.index([child]), time.time())
            else:
                s.tag("app", "again", old_index, time.time())
        return done

    monkeypatch.setattr(Janitor, "_run_phase", push_before_unlinks)
    stats = prune(s, keep_last_n="1", revision_grace="0", gc_grace="0")
    assert stats.tags_deleted == 1 and "old" not in tags(s, "app")
    assert revision_linked(s, "app", child)
    if what == "index reusing a child":
        assert not revision_linked(s, "app", sibling)  # still unlinked: nothing reaches it
    else:
        assert revision_linked(s, "app", old_index) and revision_linked(s, "app", sibling)
