"""Integration tests need Debian's docker-registry binary and skopeo.

They are skipped, with the reason, only when one of them is missing; under CI (the CI
environment variable set) a missing tool fails them instead, so CI can never skip them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from registry import BACKENDS, REGISTRY_BIN, SKOPEO
from stores import Store, store_factory

MISSING = [n for n, p in (("docker-registry", REGISTRY_BIN), ("skopeo", SKOPEO)) if p is None]
REASON = f"{' and '.join(MISSING)} not installed (apt-get install docker-registry skopeo)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
            if MISSING and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Tests that take it run once per store backend: a directory, and a bucket."""
    return str(request.param)


@pytest.fixture
def new_store(backend: str, request: pytest.FixtureRequest) -> Callable[[str], Store | None]:
    return store_factory(backend, request)


@pytest.fixture(autouse=True)
def _tools_present() -> None:
    if MISSING:
        pytest.fail(f"CI must not skip integration tests: {REASON}")
