"""Tests run against this checkout's source, installed or not (subprocesses included).

The SMB fixtures (a real Samba share through a client mount, see smbshare.py) and the S3
server (Ceph's RADOS Gateway, see rgw.py) are imported here so that every test folder can use
them; tests that do get the `smb` or `s3` marker.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest
from rgw import rgw  # noqa: F401  (the session's S3 server, see rgw.py)
from smbshare import (  # noqa: F401  (pytest finds fixtures by name in this module)
    SMB_FIXTURES,
    smb_session,
    smb_share,
    smb_share_any,
    smb_share_case_sensitive,
    smb_share_read_only,
)

# The S3 cases `make test-janitor` runs, one or a few of each kind: the storage contract, the
# GC oracle, a sweep through the registry, the race at the hold, verify, a SIGKILL trial,
# an interrupted removal, a missing bucket, the fault trials' few (and `make test-janitor`
# checks 4 GC oracle stores in buckets instead of 12, ORACLE_S3_STORES). The others get the `s3_full` marker: `make
# test-s3` runs every S3 case.
S3_QUICK = (
    "s3/*",
    "integration/test_gc_oracle.py::*[[]s3[]]",
    "integration/test_sweep_registry.py::*[[]janitor-s3*",
    "integration/test_gc_race.py::*[[]s3-hold[]]",
    "integration/test_verify_registry.py::test_damaged_*[[]s3[]]",
    "reliability/test_sigkill_sweep.py::test_sigkill_then_next_sweep[[]s3-0[]]",
    "reliability/test_sigkill_verify.py::*[[]s3[]]",
    "reliability/test_interrupted_removal.py::*[[]s3[]]",
    "reliability/test_bad_input_store.py::test_missing_bucket_writes_nothing[[]s3-sweep[]]",
    "faults/*",
)

SRC = str(Path(__file__).resolve().parent.parent / "src")
# The tests pause garbage collection at exact points instead of waiting GC_SETTLE: allow 0
# (config.SETTLE_FLOOR), in this process and every janitor it starts.
os.environ.setdefault("JANITOR_TEST_SETTLE_FLOOR", "0")
# Tests damage blobs on purpose and verify at once; production waits until a blob's data has
# not changed for verify.MIN_AGE before it believes a mismatch.
os.environ.setdefault("JANITOR_TEST_VERIFY_MIN_AGE", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SMB_FIXTURES & fixtures:
            item.add_marker(pytest.mark.smb)
        callspec = getattr(item, "callspec", None)
        # A bucket on the gateway: the rgw fixture itself, or the s3 case of a test
        # parametrized over both store backends.
        if "rgw" in fixtures or (callspec is not None and "s3" in callspec.id.split("-")):
            item.add_marker(pytest.mark.s3)
            name = item.nodeid.split("tests/", 1)[-1]
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in S3_QUICK):
                item.add_marker(pytest.mark.s3_full)
