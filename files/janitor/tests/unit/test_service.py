"""Behaviour as a service: loop mode, signals, a failed sweep, GC retried after a failure."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from synthetic import Store

OLD = time.time() - 86400


def janitor_at(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "registry_janitor", "--data-dir", str(data_dir), *args]


def janitor(s: Store, *args: str) -> list[str]:
    return janitor_at(s.root, *args)


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JANITOR_", "KEEP_", "GC_", "REVISION_", "VERIFY_"))
        or k in ("JANITOR_TEST_SETTLE_FLOOR", "JANITOR_TEST_VERIFY_MIN_AGE")  # conftest.py
    }


def fake_registry(tmp_path: Path, script: str) -> list[str]:
    """A registry config and a stand-in registry binary running `script` (sh)."""
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    binary = tmp_path / "registry"
    binary.write_text(f"#!/bin/sh\n{script}\n")
    binary.chmod(0o755)
    return [
        "--gc-engine",
        "registry",
        "--registry-config",
        str(config),
        "--registry-bin",
        str(binary),
    ]


class StderrLines:
    """A child's stderr, line by line, read by a thread: a child that goes silent cannot
    hold a test past its timeout (a readline() on the pipe would block until it writes)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of the stream

    def until(self, needle: str, timeout: float = 20) -> list[str]:
        """The lines up to and including the first one containing needle; fails once
        timeout seconds pass without it, or when the stream ends first."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{needle!r} not seen within {timeout} s in {lines}") from None
            if line is None:
                self._lines.put(None)  # a later call sees the end too
                raise AssertionError(f"{needle!r} not seen before stderr closed in {lines}")
            lines.append(line)
            if needle in line:
                return lines


def test_stderr_lines_fail_at_the_timeout_when_the_child_is_silent() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE, text=True
    ) as proc:
        started = time.monotonic()
        try:
            with pytest.raises(AssertionError, match="not seen within 1 s"):
                StderrLines(proc).until("never printed", timeout=1)
        finally:
            proc.kill()
        assert time.monotonic() - started < 5


def test_sigterm_while_waiting_stops_cleanly(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    s.tag("r", "t", s.image("x"), OLD)
    with subprocess.Popen(
        janitor(s, "sweep", "--no-run-once", "--interval-secs", "3600", "--no-run-gc"),
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as proc:
        StderrLines(proc).until("next sweep in 3600 s")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_failed_sweep_is_logged_and_the_next_one_runs_gc_again(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    for i in range(3):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    fake = fake_registry(tmp_path, "")
    fake[-1] = str(tmp_path / "missing")  # --registry-bin that does not exist
    with subprocess.Popen(
        janitor(s, "sweep", "--keep-last-n", "1", *fake, "--interval-secs", "1"),
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as proc:
        stderr = StderrLines(proc)
        first = stderr.until("sweep done")
        assert any("gc failed: registry binary not found" in line for line in first)
        assert "2 deleted" in first[-1] and "FAILED" in first[-1]
        # The next sweep has nothing new to delete but GC is still owed: it runs again.
        second = stderr.until("sweep done")
        assert "0 deleted" in second[-1]
        assert any("gc failed" in line for line in second)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 1  # the status of the last sweep
    assert (s.root / ".registry-janitor.gc-pending").exists()


def run(s: Store, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        janitor(s, *args), capture_output=True, text=True, env=clean_env(), check=False
    )


def two_tags(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data")
    s.tag("r", "a", s.image("a"), OLD)
    s.tag("r", "b", s.image("b"), OLD + 1)
    return s


def test_run_once_failure_exits_1(tmp_path: Path) -> None:
    s = two_tags(tmp_path)
    fake = fake_registry(tmp_path, "echo 'failed to garbage collect: boom' >&2\nexit 3")
    result = run(s, "--run-once", "--keep-last-n", "1", *fake)
    assert result.returncode == 1
    assert "garbage-collect exited 3: failed to garbage collect: boom" in result.stderr


def test_gc_runs_with_the_shipped_arguments_and_clears_the_pending_mark(tmp_path: Path) -> None:
    s = two_tags(tmp_path)
    argv_log = tmp_path / "argv"
    fake = fake_registry(tmp_path, f'echo "$@" > {argv_log}')
    config = str(tmp_path / "config.yml")
    result = run(s, "sweep", "--run-once", "--keep-last-n", "1", *fake)
    assert result.returncode == 0, result.stderr
    assert argv_log.read_text().split() == ["garbage-collect", config]
    assert not (s.root / ".registry-janitor.gc-pending").exists()
    # `gc` alone always runs, and passes --dry-run through.
    result = run(s, "gc", "--dry-run", *fake)
    assert result.returncode == 0, result.stderr
    assert argv_log.read_text().split() == ["garbage-collect", "--dry-run", config]


def test_two_concurrent_sweeps_the_second_is_refused(tmp_path: Path) -> None:
    s = two_tags(tmp_path)
    s.tag("r", "c", s.image("c"), OLD + 2)
    started = tmp_path / "gc-started"
    args = ["--run-once", *fake_registry(tmp_path, f"touch {started}\nsleep 3")]
    with subprocess.Popen(
        janitor(s, "sweep", "--keep-last-n", "2", *args),
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as first:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()  # the first sweep is in GC, holding the lock
        second = run(s, "sweep", "--keep-last-n", "0", *args)
        assert first.wait(20) == 0
    assert second.returncode == 1
    lock = s.root / ".registry-janitor.lock"
    assert f"ERROR: another sweep holds the lock {lock}" in second.stderr
    remaining = {p.name for p in (s.repositories / "r" / "_manifests" / "tags").iterdir()}
    assert remaining == {"b", "c"}  # the second sweep (keep 0) deleted nothing


def test_missing_store_refuses_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "unmounted"
    data.mkdir()
    for command in ("sweep", "prune", "gc", "report"):
        result = subprocess.run(
            janitor_at(data, command, "--run-once", *fake_registry(tmp_path, "exit 0")),
            capture_output=True,
            text=True,
            env=clean_env(),
            check=False,
        )
        assert result.returncode == 1, command
        assert "is the storage mounted?" in result.stderr
    assert list(data.iterdir()) == []  # not even the lock file


def test_unusable_lock_file_fails_cleanly(tmp_path: Path) -> None:
    s = two_tags(tmp_path)
    lock = tmp_path / "a-directory"
    lock.mkdir()
    result = run(s, "prune", "--keep-last-n", "0", "--lock-file", str(lock))
    assert result.returncode == 1
    assert f"cannot open lock file {lock}: Is a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_fresh_store_without_repositories_sweeps_cleanly(tmp_path: Path) -> None:
    """What the registry role creates before the first push: v2/ with no repositories/."""
    (tmp_path / "docker" / "registry" / "v2").mkdir(parents=True)
    for command in ("prune", "sweep"):
        result = subprocess.run(
            [*janitor_at(tmp_path, command, "--run-once"), *fake_registry(tmp_path, "exit 0")],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"{command} done: 0 repositories" in result.stderr, result.stderr
