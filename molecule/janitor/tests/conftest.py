"""Puts molecule/shared on sys.path: Molecule runs pytest on this folder's files alone, so
the helpers the scenarios share (registry_cache_testing) are not importable otherwise.

Groups the tests for pytest-xdist (`dist: loadgroup` in molecule.yml): the tests of one file
stay together, in file order, on one worker, as they build on one host; but the push-load
test runs once per host of group pushload, and those runs, each on its own host, go to
workers of their own, so the two GC engines' loads run at the same time."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

ONE_GROUP_PER_HOST = {"test_pushes_during_sweeps.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = item.path.name
        if group in ONE_GROUP_PER_HOST and hasattr(item, "callspec"):
            group += f"@{item.callspec.id}"
        item.add_marker(pytest.mark.xdist_group(group))
