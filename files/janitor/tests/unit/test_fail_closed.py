"""Garbage collection fails closed: every fault in a read it depends on means no blob deleted,
and everything between hold and delete is undone when anything goes wrong.

Each test injects one fault into a store with tagged images and garbage; without the rule
(store.discover skipping what it cannot list, gc aborting with blobs held, ...) these tests
lose blobs of tagged images or leave them held.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_janitor import config
from registry_janitor.hold import HELD_BLOBS
from registry_janitor.output import Output
from registry_janitor.records import SweepStats
from registry_janitor.storage import BLOBS, REPOSITORIES
from registry_janitor.sweep import Janitor
from synthetic import Faulty, Store

OLD = time.time() - 3 * 86400


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def store_with_garbage(s: Store) -> tuple[dict[str, str], set[str]]:
    """Two tagged images in two namespaces and an old unreferenced image (garbage): (tag ->
    digest, every blob of the garbage image)."""
    tagged = {
        "library/app:v1": s.image("app", shared=b"app base"),
        "other/x:v1": s.image("x", shared=b"x base"),
    }
    for ref, digest in tagged.items():
        repo, tag = ref.split(":")
        s.tag(repo, tag, digest, OLD)
    before = blob_files(s)
    s.image("garbage", shared=b"garbage base")
    garbage = blob_files(s) - before
    for path in s.blobs.rglob("data"):
        os.utime(path, (OLD, OLD))
    return tagged, garbage


def blob_files(s: Store) -> set[str]:
    return {p.parent.name for p in s.blobs.rglob("data")}


def sweep(
    s: Store, storage: object = None, **flags: str
) -> tuple[SweepStats, list[dict[str, object]]]:
    settings = {
        "data_dir": str(s.root),
        "gc_settle": "0",
        "gc_grace": "1h",
        "revision_grace": "0",
        "keep_last_n": "5",
        **flags,
    }
    cfg = config.load(settings, env={})
    sink = s.root.parent / "events.jsonl"
    with ThreadPoolExecutor(4) as pool, sink.open("w") as stream:
        janitor = Janitor(
            cfg, Output(as_json=True, stream=stream), pool, threading.Event(), storage
        )  # type: ignore[arg-type]
        stats = janitor.sweep()
    return stats, [json.loads(line) for line in sink.read_text().splitlines()]


def messages(events: list[dict[str, object]], kind: str) -> list[str]:
    return [str(e["message"]) for e in events if e["event"] == kind]


def held(s: Store) -> list[str]:
    d = s.root / HELD_BLOBS
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_without_faults_the_garbage_goes_and_the_images_stay(s: Store) -> None:
    """The baseline the other tests change one thing of: it must delete the garbage."""
    _, garbage = store_with_garbage(s)
    stats, _ = sweep(s)
    assert stats.ok and stats.blobs_deleted == len(garbage) == 4
    assert not garbage & blob_files(s) and held(s) == []
    assert stats.gc_reason == "collected"


@pytest.mark.parametrize(
    "error",
    [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error")],
    ids=["EACCES", "EIO"],
)
def test_an_unlistable_namespace_stops_gc_and_names_it(s: Store, error: OSError) -> None:
    _, _garbage = store_with_garbage(s)
    everything = blob_files(s)
    path = f"{REPOSITORIES}/library"
    stats, events = sweep(s, Faulty(s.storage, {("list", path): error}))
    assert blob_files(s) == everything  # before: library/app's blobs deleted, exit 0
    assert not stats.gc_ok and not stats.ok and stats.blobs_deleted == 0
    assert stats.gc_reason == "store_unreadable"  # registry_janitor_gc_ok's reason label
    [refused] = messages(events, "gc_refused")
    assert path in refused and error.strerror in refused


def test_an_unlistable_revisions_directory_stops_gc(s: Store) -> None:
    store_with_garbage(s)
    everything = blob_files(s)
    path = f"{REPOSITORIES}/other/x/_manifests/revisions/sha256"
    stats, events = sweep(s, Faulty(s.storage, {("list", path): OSError(errno.ESTALE, "Stale")}))
    assert blob_files(s) == everything and not stats.gc_ok
    assert any(path in m for m in messages(events, "gc_refused"))


def test_an_unlistable_blob_prefix_stops_gc(s: Store) -> None:
    _, garbage = store_with_garbage(s)
    everything = blob_files(s)
    prefix = f"{BLOBS}/{min(garbage)[:2]}"
    stats, _ = sweep(s, Faulty(s.storage, {("list", prefix): OSError(errno.EIO, "I/O")}))
    assert blob_files(s) == everything and not stats.gc_ok


def test_a_symlinked_namespace_stops_gc(s: Store, tmp_path: Path) -> None:
    """The registry's filesystem driver follows the link and serves library/app; the janitor
    does not follow it, so it must not delete what it cannot see being used."""
    store_with_garbage(s)
    everything = blob_files(s)
    moved = tmp_path / "elsewhere" / "library"
    moved.parent.mkdir()
    shutil.move(s.repositories / "library", moved)
    os.symlink(moved, s.repositories / "library")
    stats, events = sweep(s)
    assert blob_files(s) == everything and not stats.gc_ok
    [refused] = messages(events, "gc_refused")
    assert f"{REPOSITORIES}/library" in refused and "symbolic link" in refused


def test_a_symlinked_revision_stops_gc(s: Store, tmp_path: Path) -> None:
    tagged, _ = store_with_garbage(s)
    everything = blob_files(s)
    revision = s.repo("other/x") / "_manifests" / "revisions" / "sha256" / tagged["other/x:v1"][7:]
    shutil.move(revision, tmp_path / "rev")
    os.symlink(tmp_path / "rev", revision)
    stats, _ = sweep(s)
    assert blob_files(s) == everything and not stats.gc_ok


def test_a_blob_that_cannot_be_held_stays_and_the_rest_are_collected(s: Store) -> None:
    """Samba refuses to rename a directory holding a file another client has open (EBUSY):
    that blob is left where it is, named; the others go."""
    _, garbage = store_with_garbage(s)
    busy = min(garbage)
    src = f"{BLOBS}/{busy[:2]}/{busy}"
    faulty = Faulty(s.storage, {("move", src): OSError(errno.EBUSY, "Device or resource busy")})
    stats, events = sweep(s, faulty)
    assert garbage & blob_files(s) == {busy} and held(s) == []
    assert stats.blobs_deleted == len(garbage) - 1 and stats.blobs_not_held == 1
    [warning] = messages(events, "blob_not_held")
    assert busy in warning and "busy" in warning


def failing_on_call(method: str, path: str, nth: int, error: BaseException) -> Callable[..., None]:
    """A `before` hook that raises `error` at the nth call of `method` on `path`."""
    seen = [0]

    def before(name: str, args: tuple[object, ...]) -> None:
        if name == method and args and args[0] == path:
            seen[0] += 1
            if seen[0] == nth:
                raise error

    return before


def test_an_exception_between_hold_and_delete_puts_every_blob_back(s: Store) -> None:
    """Not an OSError the code expects: whatever it is, held blobs go back before it leaves."""
    _, _garbage = store_with_garbage(s)
    everything = blob_files(s)
    # The 2nd listing of the repositories root is the re-check's, after the hold.
    boom = failing_on_call("list", REPOSITORIES, 2, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        sweep(s, Faulty(s.storage, before=boom))
    assert blob_files(s) == everything and held(s) == []


def test_a_recheck_that_cannot_read_puts_every_blob_back(s: Store) -> None:
    _, _garbage = store_with_garbage(s)
    everything = blob_files(s)
    lost = failing_on_call("list", f"{REPOSITORIES}/other", 2, OSError(errno.EIO, "I/O"))
    stats, events = sweep(s, Faulty(s.storage, before=lost))
    assert blob_files(s) == everything and held(s) == []
    assert not stats.gc_ok and stats.blobs_deleted == 0 and messages(events, "gc_recheck_failed")
    assert stats.gc_reason == "recheck_unreadable"


def test_a_blob_that_cannot_be_put_back_at_once_is_retried(s: Store) -> None:
    """Everything held goes back (a stop after the hold); the first put-back of one blob
    fails (EBUSY), the retry succeeds."""
    _, garbage = store_with_garbage(s)
    everything = blob_files(s)
    victim = min(garbage)
    flaky = failing_on_call(
        "move", f"{HELD_BLOBS}/{victim}", 1, OSError(errno.EBUSY, "Device or resource busy")
    )
    lost = failing_on_call("list", REPOSITORIES, 2, OSError(errno.EIO, "I/O"))

    def both(name: str, args: tuple[object, ...]) -> None:
        lost(name, args)
        flaky(name, args)

    stats, _ = sweep(s, Faulty(s.storage, before=both))
    assert blob_files(s) == everything and held(s) == [] and stats.blobs_deleted == 0


def test_a_symlinked_held_directory_is_never_followed(s: Store, tmp_path: Path) -> None:
    """A planted `.registry-janitor-held` link must not make the janitor move or delete
    anything outside the store (before: an unrelated directory was deleted)."""
    _, garbage = store_with_garbage(s)
    victim = tmp_path / "victim"
    (victim / "blobs" / ("ab" * 32)).mkdir(parents=True)
    (victim / "blobs" / ("ab" * 32) / "data").write_text("precious")
    (victim / "blobs" / min(garbage)).mkdir()
    os.symlink(victim, s.root / ".registry-janitor-held")
    with pytest.raises(OSError) as raised:
        sweep(s)
    assert raised.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert (victim / "blobs" / ("ab" * 32) / "data").read_text() == "precious"
    assert (victim / "blobs" / min(garbage)).is_dir()
    assert garbage <= blob_files(s)  # nothing collected either
