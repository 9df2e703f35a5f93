"""SIGKILL a `verify` run: what it committed stays, and nothing is believed that was not hashed.

On copies of the store built by real pushes (crashstore), `registry-janitor verify` commits
its verifications in batches (here of 3 blobs, JANITOR_TEST_VERIFY_BATCH). It is killed

- right after its first commit (the test hook pauses it there), and
- at seeded random moments while it hashes (slowed to 10 ms per blob), in compaction or
  after it finished,

with SIGKILL to its process group. Then every blob the state records as verified must be one
whose stored bytes hash to its digest, the first case must have kept exactly its batch, and
the next run (not killed) must hash exactly the blobs the state does not hold, ending with
every blob recorded once.

On both store backends; the trials at random moments on a filesystem only (each needs its own
copy of the store, the slow part in a bucket).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import crashstore
import janitor
import pytest
from registry import Registry
from registry_janitor import backends, config, gc, verified, verify
from stores import BLOBS, File

SEED = 20261130
RANDOM_TRIALS = 3


def blobs(reg: Registry) -> dict[str, tuple[str, File]]:
    """digest -> (its data's path in the store, its size and mtime)."""
    return {
        "sha256:" + p.split("/")[-2]: (f"{BLOBS}/{p}", f)
        for p, f in reg.store.files(BLOBS).items()
        if p.endswith("/data")
    }


def recorded(reg: Registry) -> dict[str, verified.Record]:
    """The verification state as the janitor reads it, through its own storage backend."""
    cfg = config.load(
        {"data_dir": str(reg.root), **reg.store.janitor_settings()},
        env=reg.store.janitor_env({}),
        command="verify",
    )
    storage = backends.open_storage(cfg)
    try:
        return verified.State(storage).load()
    finally:
        storage.close()


def start(reg: Registry, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            crashstore.janitor_command(reg, "verify", "--json"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**crashstore.janitor_env(reg), verify.BATCH_ENV: "3", **env},
            start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # finished before the kill: a valid trial too
    proc.wait(30)


def check_state(reg: Registry) -> dict[str, verified.Record]:
    """Every record is a real verification of the bytes stored now."""
    stored = blobs(reg)
    recs = recorded(reg)
    for digest, rec in recs.items():
        path, f = stored[digest]
        assert "sha256:" + hashlib.sha256(reg.store.read(path)).hexdigest() == digest
        if reg.backend == "s3":  # the janitor dates objects in whole seconds (s3.py)
            assert (rec.size, int(rec.mtime)) == (f.size, int(f.mtime))
        else:
            assert (rec.size, rec.mtime) == (f.size, f.mtime)
    return recs


def finish(reg: Registry, before: int) -> None:
    """The next run hashes exactly what the state lacks, and then it holds everything."""
    result = janitor.run(reg, "--json", command="verify")
    assert result.returncode == 0, result.stdout + result.stderr
    [summary] = [e for e in janitor.events(result) if e["event"] == "summary"]
    assert summary["blobs_verified"] == len(blobs(reg)) - before
    assert set(check_state(reg)) == set(blobs(reg))
    assert not [n for n in reg.store.listdir(verified.JOURNAL_DIR) if n.endswith(".json")]


def test_kill_after_the_first_commit_keeps_that_batch(
    template: crashstore.Template, tmp_path: Path
) -> None:
    reg = template.copy_to(tmp_path / "store")
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    proc = start(reg, {gc.PAUSE_DIR_ENV: str(pauses)}, tmp_path / "verify.log")
    reached = pauses / "verify_committed.reached"
    deadline = time.monotonic() + 60
    while not reached.exists():
        assert proc.poll() is None, (tmp_path / "verify.log").read_text()
        assert time.monotonic() < deadline, "verify never committed"
        time.sleep(0.01)
    kill(proc)
    assert len(check_state(reg)) == 3
    assert not reg.store.is_file(verified.STATE_FILE)  # only the journal so far
    finish(reg, 3)


@pytest.mark.backends("filesystem")
def test_kill_at_random_moments(template: crashstore.Template, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    # How long an uninterrupted, slowed run takes, to draw kill times from.
    reg = template.copy_to(tmp_path / "reference")
    slow = {verify.DELAY_ENV: "0.01", "JANITOR_CONCURRENCY": "2"}
    t0 = time.monotonic()
    start(reg, slow, tmp_path / "reference.log").wait(60)
    whole = time.monotonic() - t0
    kept = []
    for trial in range(RANDOM_TRIALS):
        reg = template.copy_to(tmp_path / f"trial{trial}")
        delay = rng.uniform(0.2, whole)
        proc = start(reg, slow, tmp_path / f"trial{trial}.log")
        time.sleep(delay)
        kill(proc)
        recs = check_state(reg)
        kept.append(len(recs))
        print(f"trial {trial}: killed {delay:.2f} s in (run {whole:.2f} s), {len(recs)} kept")
        finish(reg, len(recs))
    assert any(0 < k < len(blobs(reg)) for k in kept), kept  # some kills landed mid-run
