"""SMB tests: a real Samba share through an rclone mount (fixtures in ../smbshare.py).

The registry tests here also need the integration helpers (a real `docker-registry`
process, skopeo, OCI layouts built in Python) and follow their rule: skipped with the
reason when a tool is missing, failed instead when the CI environment variable is set.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)

_spec = importlib.util.spec_from_file_location(
    "integration_conftest_for_smb", Path(INTEGRATION) / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)
MISSING, REASON = _integration.MISSING, _integration.REASON


@pytest.fixture
def registry_tools() -> None:
    """For tests that run the registry and skopeo on the share."""
    if MISSING:
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip integration tests: {REASON}")
        pytest.skip(REASON)
