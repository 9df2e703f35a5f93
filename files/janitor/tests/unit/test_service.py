"""Behaviour as a service: loop mode, signals, a failed sweep, GC retried after a failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from synthetic import Store

OLD = time.time() - 86400


def janitor(s: Store, *args: str) -> list[str]:
    return [sys.executable, "-m", "registry_janitor", "--data-dir", str(s.root), *args]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "KEEP_"))}


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen in {lines}")


def test_sigterm_while_waiting_stops_cleanly(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    s.tag("r", "t", s.image("x"), OLD)
    with subprocess.Popen(
        janitor(s, "sweep", "--no-run-once", "--interval-secs", "3600", "--no-run-gc"),
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as proc:
        read_until(proc, "next sweep in 3600 s")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_failed_sweep_is_logged_and_the_next_one_runs_gc_again(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    for i in range(3):
        s.tag("r", f"t{i}", s.image(str(i)), OLD + i)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    args = ["--keep-last-n", "1", "--registry-config", str(config)]
    with subprocess.Popen(
        janitor(
            s, "sweep", *args, "--registry-bin", str(tmp_path / "missing"), "--interval-secs", "1"
        ),
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as proc:
        first = read_until(proc, "sweep done")
        assert any("gc failed: registry binary not found" in line for line in first)
        assert "2 deleted" in first[-1] and "FAILED" in first[-1]
        # The next sweep has nothing new to delete but GC is still owed: it runs again.
        second = read_until(proc, "sweep done")
        assert "0 deleted" in second[-1]
        assert any("gc failed" in line for line in second)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 1  # the status of the last sweep
    assert (s.root / ".registry-janitor.gc-pending").exists()


def test_run_once_failure_exits_1(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    s.tag("r", "a", s.image("a"), OLD)
    s.tag("r", "b", s.image("b"), OLD + 1)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    fake = tmp_path / "registry"
    fake.write_text("#!/bin/sh\necho 'failed to garbage collect: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    result = subprocess.run(
        janitor(
            s,
            "--run-once",
            "--keep-last-n",
            "1",
            "--registry-config",
            str(config),
            "--registry-bin",
            str(fake),
        ),
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 1
    assert "garbage-collect exited 3: failed to garbage collect: boom" in result.stderr


def test_gc_runs_with_the_shipped_arguments_and_clears_the_pending_mark(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    s.tag("r", "a", s.image("a"), OLD)
    s.tag("r", "b", s.image("b"), OLD + 1)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    argv_log = tmp_path / "argv"
    fake = tmp_path / "registry"
    fake.write_text(f'#!/bin/sh\necho "$@" > {argv_log}\n')
    fake.chmod(0o755)
    result = subprocess.run(
        janitor(
            s,
            "sweep",
            "--run-once",
            "--keep-last-n",
            "1",
            "--registry-config",
            str(config),
            "--registry-bin",
            str(fake),
        ),
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert argv_log.read_text().split() == ["garbage-collect", str(config)]
    assert not (s.root / ".registry-janitor.gc-pending").exists()


def test_two_concurrent_sweeps_the_second_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "data")
    s.tag("r", "a", s.image("a"), OLD)
    s.tag("r", "b", s.image("b"), OLD + 1)
    s.tag("r", "c", s.image("c"), OLD + 2)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    started = tmp_path / "gc-started"
    slow_gc = tmp_path / "registry"
    slow_gc.write_text(f"#!/bin/sh\ntouch {started}\nsleep 3\n")
    slow_gc.chmod(0o755)
    args = ["--run-once", "--registry-config", str(config), "--registry-bin", str(slow_gc)]
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
        second = subprocess.run(
            janitor(s, "sweep", "--keep-last-n", "0", *args),
            capture_output=True,
            text=True,
            env=clean_env(),
            check=False,
        )
        assert first.wait(20) == 0
    assert second.returncode == 1
    lock = s.root / ".registry-janitor.lock"
    assert f"ERROR: another sweep holds the lock {lock}" in second.stderr
    remaining = {p.name for p in (s.repositories / "r" / "_manifests" / "tags").iterdir()}
    assert remaining == {"b", "c"}  # the second sweep (keep 0) deleted nothing
