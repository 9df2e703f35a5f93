"""Configuration: every bad value is one line on stderr, exit 2, nothing touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_janitor import __version__, cli, config


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for s in config.SETTINGS.values():
        monkeypatch.delenv(s.env, raising=False)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


BAD_ENV = [
    ("KEEP_LAST_N", "-1", 'KEEP_LAST_N: must be a whole number >= 0, got "-1"'),
    ("KEEP_LAST_N", "ten", "KEEP_LAST_N: must be a whole number"),
    ("KEEP_LAST_N", "1.5", "KEEP_LAST_N: must be a whole number"),
    ("JANITOR_INTERVAL_SECS", "0", "JANITOR_INTERVAL_SECS: must be a whole number >= 1"),
    ("JANITOR_INTERVAL_SECS", "-5", "JANITOR_INTERVAL_SECS"),
    ("GC_DELETE_UNTAGGED", "maybe", "GC_DELETE_UNTAGGED: must be one of true/false"),
    ("RUN_ONCE", "2", "RUN_ONCE: must be one of"),
    ("DRY_RUN", "", "DRY_RUN: must be one of"),
    ("RUN_GC", "on", "RUN_GC: must be one of"),
    ("JANITOR_DATA_DIR", "/does/not/exist", "JANITOR_DATA_DIR: directory does not exist"),
    ("KEEP_MIN_AGE", "5 minutes", "KEEP_MIN_AGE: must be a duration"),
    ("KEEP_MIN_AGE", "-1h", "KEEP_MIN_AGE: must be a duration"),
    ("PROTECT_TAGS", "v(", "PROTECT_TAGS: not a valid regular expression"),
    ("JANITOR_CONCURRENCY", "11", "JANITOR_CONCURRENCY: must be a whole number between 1 and 10"),
    ("JANITOR_CONCURRENCY", "0", "JANITOR_CONCURRENCY"),
    ("JANITOR_POLICY_FILE", "/no/such/policy.toml", "JANITOR_POLICY_FILE /no/such/policy.toml"),
    ("JANITOR_METRICS_FILE", "/no/such/dir/m.prom", "JANITOR_METRICS_FILE: directory does not"),
    ("JANITOR_REGISTRY_CONFIG", "/no/such/config.yml", "JANITOR_REGISTRY_CONFIG: file does not"),
    ("JANITOR_LOCK_FILE", "/no/such/dir/j.lock", "JANITOR_LOCK_FILE: directory does not exist"),
    ("GC_ENGINE", "zot", "GC_ENGINE: must be one of janitor, registry"),
    ("GC_GRACE", "2 hours", "GC_GRACE: must be a duration"),
    ("GC_GRACE", "30m", "GC_GRACE: must not be shorter than REVISION_GRACE (1h)"),
    ("GC_SETTLE", "-1", "GC_SETTLE: must be a duration"),
    ("REVISION_GRACE", "1 day", "REVISION_GRACE: must be a duration"),
    ("VERIFY_BUDGET", "10M", "VERIFY_BUDGET: must be a size like 2GiB or 500MB, a duration like"),
    ("VERIFY_INTERVAL", "monthly", "VERIFY_INTERVAL: must be a duration like 7d or 30d, or never"),
]


@pytest.mark.parametrize(
    ("env", "value", "message"), BAD_ENV, ids=[f"{e}={v}" for e, v, _ in BAD_ENV]
)
def test_bad_environment_value(
    env: str,
    value: str,
    message: str,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if env != "JANITOR_DATA_DIR":
        monkeypatch.setenv("JANITOR_DATA_DIR", str(data_dir))
    if env == "JANITOR_REGISTRY_CONFIG":  # only the registry's own garbage-collect reads it
        monkeypatch.setenv("GC_ENGINE", "registry")
    monkeypatch.setenv(env, value)
    code, err = run_cli(["sweep"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("registry-janitor: ")
    assert message in err
    assert list(data_dir.iterdir()) == []  # nothing touched, not even the lock file


@pytest.mark.parametrize("value", ["0", "1s"])
def test_gc_settle_below_its_floor_is_refused_with_the_reason(
    value: str,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(config.SETTLE_FLOOR_ENV)  # conftest.py lowers it for the other tests
    monkeypatch.setenv("JANITOR_DATA_DIR", str(data_dir))
    monkeypatch.setenv("GC_SETTLE", value)
    code, err = run_cli(["sweep"], capsys)
    assert code == 2 and f"GC_SETTLE: must be at least {config.SETTLE_FLOOR}s" in err
    assert "just accepted" in err and list(data_dir.iterdir()) == []
    monkeypatch.setenv("GC_SETTLE", f"{config.SETTLE_FLOOR}s")
    assert config.load({"data_dir": str(data_dir)}, env=os.environ).gc_settle == config.SETTLE_FLOOR


BAD_FLAGS = [
    (["--keep-last-n", "-1"], '--keep-last-n: must be a whole number >= 0, got "-1"'),
    (["--interval-secs", "0"], "--interval-secs: must be a whole number >= 1"),
    (["--keep-min-age", "2y"], "--keep-min-age: must be a duration"),
    (["--concurrency", "64"], "--concurrency: must be a whole number between 1 and 10"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--dry-run=maybe"], "--dry-run"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag(
    argv: list[str], message: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["--data-dir", str(data_dir), "--no-run-gc", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert list(data_dir.iterdir()) == []


def test_defaults(data_dir: Path) -> None:
    cfg = config.load({"data_dir": str(data_dir)}, env={})
    assert cfg.keep_last_n == 10
    assert cfg.interval_secs == 3600
    assert cfg.gc_delete_untagged and cfg.run_gc
    assert not cfg.run_once and not cfg.dry_run
    assert cfg.registry_config == Path("/etc/docker/registry/config.yml")
    assert cfg.registry_bin == "registry"
    assert cfg.keep_min_age == 0 and cfg.protect_tags is None
    assert cfg.lock_file == data_dir / ".registry-janitor.lock"
    assert cfg.concurrency == 8
    assert cfg.policy_file is None and cfg.metrics_file is None


def test_defaults_data_dir_is_var_lib_registry() -> None:
    assert config.SETTINGS["data_dir"].default == "/var/lib/registry"


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("YES", True), ("1", True), ("False", False), ("no", False), ("0", False)],
)
def test_booleans(text: str, value: bool, data_dir: Path) -> None:
    cfg = config.load({"data_dir": str(data_dir)}, env={"DRY_RUN": text})
    assert cfg.dry_run is value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("6h", 21600),
        ("2d", 172800),
        ("1w", 604800),
    ],
)
def test_durations(text: str, seconds: int, data_dir: Path) -> None:
    cfg = config.load({"data_dir": str(data_dir)}, env={"KEEP_MIN_AGE": text})
    assert cfg.keep_min_age == seconds


def test_flags_win_over_environment(data_dir: Path, tmp_path: Path) -> None:
    env = {"KEEP_LAST_N": "3", "DRY_RUN": "true", "JANITOR_DATA_DIR": "/nope"}
    cfg = config.load({"keep_last_n": "7", "dry_run": False, "data_dir": str(data_dir)}, env=env)
    assert cfg.keep_last_n == 7 and cfg.dry_run is False and cfg.data_dir == data_dir


def test_flags_after_the_subcommand(data_dir: Path) -> None:
    args = vars(cli.build_parser().parse_args(["prune", "--keep-last-n", "4", "--dry-run"]))
    assert args["keep_last_n"] == "4" and args["dry_run"] is True and args["command"] == "prune"
    args = vars(cli.build_parser().parse_args(["--keep-last-n", "4", "prune"]))
    assert args["keep_last_n"] == "4"


def test_version_and_module_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "registry_janitor", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"registry-janitor {__version__}"
