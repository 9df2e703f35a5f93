"""`verify` on synthetic stores: what it hashes and in which order, the budget, the state,
corruption found, quarantined and reported with the tags it breaks, and the lock it shares
with sweeps."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from registry_janitor import config, lock, metrics, verified, verify
from registry_janitor.output import Output
from registry_janitor.quarantine import QUARANTINE_DIR, Quarantine
from registry_janitor.records import VerifyStats
from registry_janitor.storage import FilesystemStorage
from registry_janitor.sweep import Janitor
from synthetic import Store
from test_service import clean_env, janitor
from test_sweep import tree_hash

NOW = time.time()
OLD = NOW - 3 * 86400


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def run(
    s: Store,
    storage: Any = None,
    stop: threading.Event | None = None,
    **flags: object,
) -> tuple[VerifyStats, list[dict[str, Any]]]:
    """One verify run in this process: its stats and its JSON events."""
    cfg = config.load({"data_dir": str(s.root), "registry_config": "/dev/null", **flags}, env={})
    sink = s.root.parent / "events.jsonl"
    with ThreadPoolExecutor(4) as pool, sink.open("w") as stream:
        stats = verify.Verifier(cfg, Output(as_json=True, stream=stream), pool, stop, storage).run()
    return stats, [json.loads(line) for line in sink.read_text().splitlines()]


def data_path(s: Store, digest: str) -> Path:
    h = digest.removeprefix("sha256:")
    return s.blobs / "sha256" / h[:2] / h / "data"


def all_blobs(s: Store) -> set[str]:
    return {"sha256:" + p.parent.name for p in s.blobs.glob("sha256/*/*/data")}


def records(s: Store) -> dict[str, verified.Record]:
    return verified.State(FilesystemStorage(s.root)).load()


def two_repos(s: Store) -> dict[str, str]:
    """app:v1, app:v2 (a shared base layer), multi:m (an index of two images sharing it)."""
    tags = {"app:v1": s.image("v1"), "app:v2": s.image("v2")}
    children = [s.image("amd"), s.image("arm")]
    tags["multi:m"] = s.index(children)
    for child in children:
        s.revision("multi", child)
    for i, (ref, digest) in enumerate(tags.items()):
        repo, tag = ref.split(":")
        s.tag(repo, tag, digest, OLD + i)
    return tags


def layer_of(s: Store, manifest: str, index: int = 1) -> str:
    doc = json.loads(data_path(s, manifest).read_bytes())
    return str(doc["layers"][index]["digest"])


# -- what to hash -----------------------------------------------------------------------


def test_never_verified_newest_first_then_due_least_recently_verified_first() -> None:
    blobs = [verified.Blob(f"sha256:{i:064x}", 10, float(i)) for i in range(6)]
    recs = {
        blobs[0].digest: verified.Record(NOW - 40 * 86400, 10, 0.0),  # due, verified longest ago
        blobs[1].digest: verified.Record(NOW - 35 * 86400, 10, 1.0),  # due
        blobs[2].digest: verified.Record(NOW - 1 * 86400, 10, 2.0),  # verified recently
        blobs[3].digest: verified.Record(NOW - 50 * 86400, 10, 99.0),  # rewritten since: new
    }
    new, due = verified.queue(blobs, recs, NOW, 30 * 86400)
    assert [b.digest for b in new] == [blobs[i].digest for i in (5, 4, 3)]
    assert [b.digest for b in due] == [blobs[0].digest, blobs[1].digest]
    assert verified.queue(blobs, recs, NOW, None)[1] == []  # VERIFY_INTERVAL=never


def test_a_byte_budget_stops_after_the_blob_that_reaches_it() -> None:
    blobs = [verified.Blob(f"sha256:{i:064x}", size, 0.0) for i, size in enumerate((4, 4, 4, 100))]
    assert [b.size for b in verified.take(blobs, 8)] == [4, 4]
    assert [b.size for b in verified.take(blobs, 9)] == [4, 4, 4]
    assert [b.size for b in verified.take(blobs[3:], 8)] == [100]  # never starved
    assert len(verified.take(blobs, None)) == 4


# -- budget and interval settings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("2GiB", config.Budget(bytes=2 << 30)),
        ("500MB", config.Budget(bytes=500_000_000)),
        ("10m", config.Budget(seconds=600)),
        ("1.5 GiB, 1h", config.Budget(bytes=3 << 29, seconds=3600)),
        ("90", config.Budget(seconds=90)),
        ("unlimited", config.Budget()),
    ],
)
def test_budget_values(text: str, budget: config.Budget) -> None:
    assert config.parse_budget("VERIFY_BUDGET", text) == budget


@pytest.mark.parametrize("text", ["", "0", "0GiB", "2 gigs", "1GiB,2GiB", "1h,2h", "10M"])
def test_bad_budget_values(text: str) -> None:
    with pytest.raises(config.ConfigError, match="VERIFY_BUDGET: must be a size"):
        config.parse_budget("VERIFY_BUDGET", text)


def test_interval_values() -> None:
    assert config.parse_interval("VERIFY_INTERVAL", "never") is None
    assert config.parse_interval("VERIFY_INTERVAL", "30d") == 30 * 86400
    with pytest.raises(config.ConfigError, match="VERIFY_INTERVAL: must be a duration"):
        config.parse_interval("VERIFY_INTERVAL", "monthly")


# -- clean stores and the state ------------------------------------------------------------


def test_a_clean_store_is_verified_once_and_not_again_until_due(s: Store) -> None:
    two_repos(s)
    stats, events = run(s)
    assert stats.ok and stats.blobs_verified == stats.blobs == len(all_blobs(s))
    assert stats.bytes_verified == sum(p.stat().st_size for p in s.blobs.glob("sha256/*/*/data"))
    assert not [e for e in events if e["level"] == "error"]
    assert set(records(s)) == all_blobs(s)
    again, _ = run(s)
    assert again.ok and again.blobs_verified == 0 and again.unverified == 0
    everything, _ = run(s, verify_interval="0")
    assert everything.blobs_verified == stats.blobs
    assert not list((s.root / verified.JOURNAL_DIR).iterdir())  # folded into the state file


def test_a_blob_written_again_counts_as_never_verified(s: Store) -> None:
    two_repos(s)
    run(s)
    victim = next(iter(sorted(all_blobs(s))))
    os.utime(data_path(s, victim), (NOW, NOW))  # deleted by GC and uploaded again, say
    stats, _ = run(s)
    assert stats.blobs_verified == 1 and records(s)[victim].mtime == NOW


def test_the_byte_budget_spreads_a_pass_over_runs_without_repeating_a_blob(s: Store) -> None:
    for i in range(30):
        s.blob(os.urandom(1000 + i))
    hashed = 0
    for _ in range(10):
        stats, _ = run(s, verify_budget="5000B")
        hashed += stats.blobs_verified
        if not stats.unverified:
            break
        # Started while under the budget: only the last blob may cross it.
        assert stats.limit == "bytes" and stats.bytes_verified - 1029 < 5000 <= stats.bytes_verified
    assert hashed == 30 and set(records(s)) == all_blobs(s)


def test_unreadable_state_only_costs_work(s: Store) -> None:
    two_repos(s)
    run(s)
    (s.root / verified.STATE_FILE).write_text("{not json")
    stats, _ = run(s)
    assert stats.ok and stats.blobs_verified == stats.blobs


# -- corruption ------------------------------------------------------------------------------


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE: dict[str, Callable[[Path], None]] = {"flip": flip, "truncate": truncate, "empty": empty}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_corrupt_layer_is_quarantined_and_its_tags_named(s: Store, damage: str) -> None:
    tags = two_repos(s)
    layer = layer_of(s, tags["app:v1"])
    original = data_path(s, layer).read_bytes()
    DAMAGE[damage](data_path(s, layer))
    damaged = data_path(s, layer).read_bytes()
    stats, events = run(s)
    assert not stats.ok and stats.corrupt == [layer] and stats.broken_tags == ["app:v1"]
    [event] = [e for e in events if e["event"] == "blob_corrupt"]
    assert event["tags"] == ["app:v1"] and event["digest"] == layer
    assert not data_path(s, layer).exists()
    [entry] = Quarantine(FilesystemStorage(s.root)).entries()
    assert (s.root / entry.path / "data").read_bytes() == damaged
    assert entry.tags == {"app:v1": tags["app:v1"]} and entry.digest == layer
    assert entry.report["content_digest"] == "sha256:" + hashlib.sha256(damaged).hexdigest()
    assert layer not in records(s)

    # Until the image is pushed again, every run says so.
    still, events = run(s)
    assert not still.ok and still.broken_tags == ["app:v1"] and still.corrupt == []
    assert [e["digest"] for e in events if e["event"] == "quarantine_open"] == [layer]

    # A push uploads the layer again: healed, and the new copy is verified as new.
    data_path(s, layer).parent.mkdir(parents=True)
    data_path(s, layer).write_bytes(original)
    healed, _ = run(s)
    assert healed.ok and healed.blobs_verified == 1 and healed.quarantined == 1


def test_a_corrupt_shared_layer_names_every_tag_that_needs_it(s: Store) -> None:
    tags = two_repos(s)
    base = layer_of(s, tags["app:v1"], 0)
    flip(data_path(s, base))
    stats, _ = run(s)
    assert stats.broken_tags == ["app:v1", "app:v2", "multi:m"]


def test_a_corrupt_index_child_breaks_the_index_and_gc_fails_closed(s: Store) -> None:
    tags = two_repos(s)
    child = json.loads(data_path(s, tags["multi:m"]).read_bytes())["manifests"][1]["digest"]
    truncate(data_path(s, child))
    s.age_everything(OLD)
    stats, events = run(s)
    assert stats.corrupt == [child] and stats.broken_tags == ["multi:m"]
    assert not [e for e in events if e["event"] == "manifest_missing"]  # said once, as corrupt

    # Garbage collection cannot see what the missing manifest named: it deletes nothing and
    # says what to do.
    cfg = config.load({"data_dir": str(s.root), "gc_settle": "0", "gc_grace": "1h"}, env={})
    sink = s.root.parent / "sweep.jsonl"
    with ThreadPoolExecutor(2) as pool, sink.open("w") as stream:
        swept = Janitor(cfg, Output(as_json=True, stream=stream), pool).sweep()
    assert not swept.gc_ok and swept.blobs_deleted == 0
    refused = [json.loads(x) for x in sink.read_text().splitlines()]
    [problem] = [e["message"] for e in refused if e["event"] == "gc_refused"]
    assert child in problem and QUARANTINE_DIR in problem and "push that image again" in problem


def test_a_manifest_that_does_not_parse_is_reported_not_moved(s: Store) -> None:
    odd = s.blob(json.dumps({"manifests": [{"size": 1}]}).encode())  # an index entry, no digest
    s.tag("odd", "t", odd, OLD)
    stats, events = run(s)
    assert not stats.ok and stats.manifests_unreadable == [odd] and stats.corrupt == []
    assert data_path(s, odd).exists()
    [event] = [e for e in events if e["event"] == "manifest_unreadable"]
    assert event["tags"] == ["odd:t"]


def test_a_linked_manifest_without_its_blob_is_reported(s: Store) -> None:
    tags = two_repos(s)
    data_path(s, tags["app:v2"]).unlink()
    stats, events = run(s)
    assert not stats.ok and stats.broken_tags == ["app:v2"]
    assert [e["digest"] for e in events if e["event"] == "manifest_missing"] == [tags["app:v2"]]


class FirstReadWrong:
    """A storage whose first read of one path returns wrong bytes (a read that went wrong on
    the wire), as a flaky network mount might."""

    def __init__(self, inner: FilesystemStorage, path: str) -> None:
        self.inner = inner
        self.path = path
        self.reads = 0
        self.fresh: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_chunks(
        self, path: str, size: int, *, fresh: bool = False
    ) -> Generator[bytes | memoryview, None, None]:
        if path == self.path:
            self.reads += 1
            self.fresh.append(fresh)
            if self.reads == 1:
                yield b"not what is stored"
                return
        yield from self.inner.read_chunks(path, size, fresh=fresh)


class ShortReads(FirstReadWrong):
    """Every read of one path ends early (a read cut short on the wire): not the content."""

    def read_chunks(
        self, path: str, size: int, *, fresh: bool = False
    ) -> Generator[bytes | memoryview, None, None]:
        if path != self.path:
            yield from self.inner.read_chunks(path, size, fresh=fresh)
            return
        self.reads += 1
        for chunk in self.inner.read_chunks(path, size, fresh=fresh):
            yield bytes(chunk)[: len(chunk) // 2]
            return


def test_a_mismatch_not_seen_again_is_not_quarantined(s: Store) -> None:
    tags = two_repos(s)
    layer = layer_of(s, tags["app:v2"])
    h = layer.removeprefix("sha256:")
    storage = FirstReadWrong(
        FilesystemStorage(s.root), f"docker/registry/v2/blobs/sha256/{h[:2]}/{h}/data"
    )
    stats, events = run(s, storage=storage)
    assert storage.reads == 2 and stats.corrupt == [] and data_path(s, layer).exists()
    assert storage.fresh == [False, True]  # the second read bypasses the cached pages
    assert [e["digest"] for e in events if e["event"] == "blob_read_mismatch"] == [layer]
    assert layer not in records(s)  # not believed either way: hashed again next run


def test_reads_shorter_than_the_file_are_an_error_not_corruption(s: Store) -> None:
    tags = two_repos(s)
    layer = layer_of(s, tags["app:v2"])
    h = layer.removeprefix("sha256:")
    storage = ShortReads(
        FilesystemStorage(s.root), f"docker/registry/v2/blobs/sha256/{h[:2]}/{h}/data"
    )
    stats, events = run(s, storage=storage)
    assert storage.reads == 2 and stats.corrupt == [] and data_path(s, layer).exists()
    [error] = [e for e in events if e["event"] == "error" and e.get("digest") == layer]
    assert "read " in str(error["message"]) and not stats.ok


def test_a_mismatch_in_a_blob_written_moments_ago_is_not_believed_yet(
    s: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry writes manifest blobs in place: one being written hashes wrong for a
    moment. A blob whose data changed within verify.MIN_AGE is reported, not moved."""
    monkeypatch.delenv(verify.MIN_AGE_ENV)  # conftest.py lowers it for the other tests
    tags = two_repos(s)
    layer = layer_of(s, tags["app:v1"])
    flip(data_path(s, layer))  # written now
    stats, events = run(s)
    assert stats.corrupt == [] and data_path(s, layer).exists()
    [mismatch] = [e for e in events if e["event"] == "blob_read_mismatch"]
    assert mismatch["digest"] == layer and "checked again next run" in str(mismatch["message"])
    old = time.time() - verify.MIN_AGE - 60
    os.utime(data_path(s, layer), (old, old))  # the same damage, older than MIN_AGE
    stats, _ = run(s)
    assert stats.corrupt == [layer] and not data_path(s, layer).exists()


def test_a_dry_run_changes_nothing(s: Store) -> None:
    tags = two_repos(s)
    flip(data_path(s, layer_of(s, tags["app:v1"])))
    before = tree_hash(s.root)
    stats, _ = run(s, dry_run=True)
    assert stats.corrupt and stats.broken_tags == ["app:v1"]
    assert tree_hash(s.root) == before


# -- the command ---------------------------------------------------------------------------


def cli(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_the_time_budget_ends_a_run_and_the_next_continues(s: Store) -> None:
    for i in range(40):
        s.blob(os.urandom(100 + i))
    env = {**clean_env(), verify.DELAY_ENV: "0.1", "JANITOR_CONCURRENCY": "2"}
    cmd = janitor(s, "verify", "--verify-budget", "1s", "--registry-config", "/dev/null", "--json")
    t0 = time.monotonic()
    first = cli(cmd, env)
    elapsed = time.monotonic() - t0
    summary = json.loads(first.stdout.splitlines()[-1])
    assert first.returncode == 0, first.stderr
    assert summary["limit"] == "time" and 0 < summary["blobs_verified"] < 40
    # Blobs already started finish: 2 threads x 0.1 s beyond the budget, plus start-up.
    assert summary["duration"] < 1.5 and elapsed < 10
    second = cli(cmd, env)
    again = json.loads(second.stdout.splitlines()[-1])
    assert again["blobs_verified"] > 0 and set(records(s)) <= all_blobs(s)
    assert len(records(s)) == summary["blobs_verified"] + again["blobs_verified"]


def test_metrics_are_written_beside_the_sweeps_and_counters_carry_over(s: Store) -> None:
    tags = two_repos(s)
    prom = s.root.parent / "registry_janitor.prom"
    cmd = janitor(s, "verify", "--registry-config", "/dev/null", "--metrics-file", str(prom))
    assert cli(cmd, clean_env()).returncode == 0
    flip(data_path(s, layer_of(s, tags["app:v1"])))
    assert cli(cmd, clean_env()).returncode == 1
    assert not prom.exists()
    values = metrics.read_previous(metrics.verify_file(prom))
    p = metrics.P
    assert values[p + "blobs_verified_total"] == len(all_blobs(s)) + 1  # +1: now quarantined
    assert values[p + "blobs_corrupt_total"] == 1
    assert values[p + "broken_tags"] == 1 and values[p + "blobs_quarantined"] == 1
    assert values[p + "verify_last_run_success"] == 0
    assert values[p + "blobs_unverified"] == 0
    assert values[p + "verify_oldest_unverified_age_seconds"] == 0


def test_oldest_unverified_age(s: Store) -> None:
    for i in range(3):
        digest = s.blob(os.urandom(2000))
        os.utime(data_path(s, digest), (OLD + i, OLD + i))
    stats, _ = run(s, verify_budget="2000B")  # the newest only
    assert stats.unverified == 2 and stats.oldest_unverified == OLD
    prom = s.root.parent / "m.prom"
    prom.write_text(metrics.render_verify(stats, {}, OLD + 3600))
    assert metrics.read_previous(prom)[f"{metrics.P}verify_oldest_unverified_age_seconds"] == 3600


# -- the lock --------------------------------------------------------------------------------


def test_a_sweep_waits_for_a_verify_and_a_verify_for_a_sweep(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    for holder, newcomer in (("verify", "sweep"), ("sweep", "verify")):
        waited: list[str] = []
        held = lock.SweepLock(path, holder).__enter__()
        threading.Timer(0.6, held.__exit__, (None, None, None)).start()
        t0 = time.monotonic()
        with lock.SweepLock(path, newcomer, on_wait=waited.append):
            assert time.monotonic() - t0 >= 0.5
            assert path.read_text().startswith(f"{newcomer} {os.getpid()}")
        assert waited == [holder]


def test_a_lock_held_on_a_cifs_mount_eacces_is_held_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's cifs client fails flock(LOCK_NB) on a lock held elsewhere with EACCES,
    not EWOULDBLOCK (molecule/vm): that is "another sweep holds the lock"."""

    def flock_on_cifs(fd: int, operation: int) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    path = tmp_path / "lock"
    path.write_text("sweep 1\n")
    monkeypatch.setattr(lock.fcntl, "flock", flock_on_cifs)
    with pytest.raises(lock.LockHeld, match="another sweep holds the lock"):
        lock.SweepLock(path, "prune").__enter__()


def test_sweeps_still_refuse_each_other_at_once_and_waits_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with lock.SweepLock(path, "sweep"):
        t0 = time.monotonic()
        with pytest.raises(lock.LockHeld, match="another sweep holds the lock"):
            lock.SweepLock(path, "prune").__enter__()
        assert time.monotonic() - t0 < 0.3
    with lock.SweepLock(path, "verify"):
        with pytest.raises(lock.LockHeld, match="a verify run holds the lock"):
            lock.SweepLock(path, "sweep", wait=0.3).__enter__()
        stop = threading.Event()
        stop.set()
        with pytest.raises(lock.LockHeld):
            lock.SweepLock(path, "gc", stop=stop).__enter__()


def test_a_sweep_started_during_a_verify_waits_and_then_runs(s: Store) -> None:
    two_repos(s)
    for _ in range(20):
        s.blob(os.urandom(500))
    env = {**clean_env(), verify.DELAY_ENV: "0.1", "JANITOR_CONCURRENCY": "1"}
    slow = subprocess.Popen(
        janitor(s, "verify", "--registry-config", "/dev/null", "--json"),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert slow.stdout is not None
    for line in slow.stdout:  # the verify holds the lock once it plans
        if '"verify_plan"' in line:
            break
    sweep = cli(janitor(s, "sweep", "--run-once", "--json", "--gc-settle", "0"), clean_env())
    rest = slow.stdout.read()
    assert slow.wait(30) == 0 and '"summary"' in rest
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    [wait] = [json.loads(x) for x in sweep.stdout.splitlines() if '"lock_wait"' in x]
    assert wait["holder"] == "verify"
