"""Runs the janitor the way the deployment does: a subprocess of the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from registry import Registry


def run(
    registry: Registry, *args: str, command: str = "sweep", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "registry_janitor",
            command,
            "--run-once",
            *registry.janitor_args(),
            *args,
        ],
        capture_output=True,
        check=False,  # callers assert on the exit status
        text=True,
        timeout=300,
        env=janitor_env(registry, env),
    )


def janitor_env(registry: Registry, env: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without the janitor's settings, plus what the store needs
    (a bucket's credentials) and `env`."""
    base_env = {k: v for k, v in os.environ.items() if k not in _OURS} | TEST_DEFAULTS
    return registry.store.janitor_env({**base_env, **(env or {})})


# Nothing pushes during most tests: held blobs need not wait for manifest pushes in flight.
# Tests of the race set GC_SETTLE themselves.
TEST_DEFAULTS = {"GC_SETTLE": "0"}


def events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


_OURS = {
    "KEEP_LAST_N",
    "JANITOR_INTERVAL_SECS",
    "GC_DELETE_UNTAGGED",
    "RUN_ONCE",
    "DRY_RUN",
    "JANITOR_DATA_DIR",
    "JANITOR_REGISTRY_CONFIG",
    "JANITOR_REGISTRY_BIN",
    "RUN_GC",
    "KEEP_MIN_AGE",
    "PROTECT_TAGS",
    "KEEP_PULLED_WITHIN",
    "KEEP_LAST_PULLED",
    "COUNT_HEAD_AS_PULL",
    "JANITOR_REGISTRY_LOG",
    "JANITOR_POLICY_FILE",
    "JANITOR_METRICS_FILE",
    "JANITOR_LOCK_FILE",
    "JANITOR_CONCURRENCY",
    "GC_ENGINE",
    "GC_GRACE",
    "GC_SETTLE",
    "REVISION_GRACE",
    "JANITOR_TEST_PAUSE_DIR",
    "VERIFY_BUDGET",
    "VERIFY_INTERVAL",
    "JANITOR_TEST_VERIFY_BATCH",
    "JANITOR_TEST_VERIFY_DELAY",
    "JANITOR_STORAGE",
    "JANITOR_S3_BUCKET",
    "JANITOR_S3_ENDPOINT",
    "JANITOR_S3_REGION",
    "JANITOR_S3_ROOT_DIRECTORY",
    "JANITOR_S3_PATH_STYLE",
    "JANITOR_S3_VERIFY_TLS",
    "JANITOR_S3_ACCESS_KEY",
    "JANITOR_S3_SECRET_KEY",
    "JANITOR_S3_ACCESS_KEY_FILE",
    "JANITOR_S3_SECRET_KEY_FILE",
}
