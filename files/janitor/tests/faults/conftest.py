"""Fault trials: the janitor through a fault layer (faultfs.py on a directory, faultproxy.py in
front of the RADOS Gateway), see trials.py. The full runs (500 trials per backend) are
`make fault-trials`; these tests are a small subset (`make test-janitor`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import servers
import trials


def fuse_missing() -> str:
    need = []
    if not Path("/dev/fuse").exists():
        need.append("/dev/fuse")
    if shutil.which("fusermount3") is None:
        need.append("fusermount3 (apt-get install fuse3)")
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        need.append("mfusepy (pip install mfusepy)")
    return "; ".join(need)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the janitor through injected faults")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def fs_trials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[trials.FsBackend]:
    """A faultfs mount for the session's filesystem trials (each trial its own store below)."""
    servers.require("FUSE", fuse_missing())
    with trials.FsBackend(tmp_path_factory.mktemp("faultfs")).running() as backend:
        yield backend


@pytest.fixture(scope="session")
def s3_trials(rgw: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[trials.S3Backend]:
    """The fault proxy in front of the session's RADOS Gateway (a bucket per trial)."""
    with trials.S3Backend(tmp_path_factory.mktemp("faultproxy"), rgw).running() as backend:
        yield backend
