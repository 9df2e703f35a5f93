"""Integration tests need Debian's docker-registry binary and skopeo.

They are skipped, with the reason, only when one of them is missing; under CI (the CI
environment variable set) a missing tool fails them instead, so CI can never skip them.
"""

from __future__ import annotations

import os

import pytest
from registry import REGISTRY_BIN, SKOPEO

MISSING = [n for n, p in (("docker-registry", REGISTRY_BIN), ("skopeo", SKOPEO)) if p is None]
REASON = f"{' and '.join(MISSING)} not installed (apt-get install docker-registry skopeo)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
            if MISSING and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(autouse=True)
def _tools_present() -> None:
    if MISSING:
        pytest.fail(f"CI must not skip integration tests: {REASON}")
