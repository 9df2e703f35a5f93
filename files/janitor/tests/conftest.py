"""Tests run against this checkout's source, installed or not (subprocesses included).

The SMB fixtures (a real Samba share through a client mount, see smbshare.py) and the S3
server (Ceph's RADOS Gateway, see rgw.py) are imported here so that every test folder can use
them; tests that do get the `smb` or `s3` marker.
"""

from __future__ import annotations

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

SRC = str(Path(__file__).resolve().parent.parent / "src")
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
