"""The fault layers do what their control file says, and log it (faultfs.py, faultproxy.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from faultproxy import FaultProxy, truncate_listing
from faultrules import read_log, write_control
from trials import FsBackend, S3Backend


def test_faultfs_fails_chosen_calls(fs_trials: FsBackend) -> None:
    src = fs_trials.source / "layers"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"0123456789")
    mnt = fs_trials.mount / "layers"
    start = fs_trials.log.stat().st_size if fs_trials.log.exists() else 0
    try:
        write_control(fs_trials.control, [
            {"id": "dir", "ops": ["opendir"], "path": "^/layers/a$", "fault": "EACCES",
             "nth": 2, "times": 1},
            {"id": "short", "ops": ["read"], "path": "/f$", "fault": "short"},
            {"id": "held", "ops": ["rename"], "path": "held", "fault": "EBUSY"},
        ])  # fmt: skip
        assert os.listdir(mnt / "a") == ["b"]  # the first call passes (nth 2)
        with pytest.raises(PermissionError):
            os.listdir(mnt / "a")
        assert os.listdir(mnt / "a") == ["b"]  # and only one fails (times 1)
        fd = os.open(mnt / "a" / "b" / "f", os.O_RDONLY)
        try:
            assert os.read(fd, 10) == b"01234"  # half of what was asked
        finally:
            os.close(fd)
        with pytest.raises(OSError) as exc:
            os.rename(mnt / "a" / "b" / "f", mnt / "a" / "held")
        assert exc.value.errno == errno.EBUSY
        trigger = fs_trials.work / "layers-trigger"
        write_control(fs_trials.control, [
            {"id": "late", "ops": ["getattr"], "path": "^/layers/a/b/f$", "fault": "EIO",
             "after": str(trigger)},
        ])  # fmt: skip
        assert (mnt / "a" / "b" / "f").stat().st_size == 10  # no trigger yet
        trigger.touch()
        with pytest.raises(OSError) as exc:
            (mnt / "a" / "b" / "f").stat()
        assert exc.value.errno == errno.EIO
    finally:
        write_control(fs_trials.control, [])
    fired = [(f["rule"], f["op"]) for f in read_log(fs_trials.log, start)]
    assert fired[:4] == [("dir", "opendir"), ("short", "read"), ("held", "rename"),
                         ("late", "getattr")]  # fmt: skip


def test_truncated_listing_keeps_half_without_token() -> None:
    ns = "http://s3.amazonaws.com/doc/2006-03-01/"
    page = (
        f'<ListBucketResult xmlns="{ns}"><Name>b</Name><Prefix>p/</Prefix><KeyCount>4</KeyCount>'
        "<IsTruncated>true</IsTruncated><NextContinuationToken>t</NextContinuationToken>"
        "<Contents><Key>p/a</Key></Contents><Contents><Key>p/c</Key></Contents>"
        "<CommonPrefixes><Prefix>p/b/</Prefix></CommonPrefixes>"
        "<CommonPrefixes><Prefix>p/d/</Prefix></CommonPrefixes></ListBucketResult>"
    ).encode()
    out = truncate_listing(page).decode()
    assert "p/a" in out and "p/b/" in out and "p/c" not in out and "p/d/" not in out
    assert "<IsTruncated>true</IsTruncated>" in out and "NextContinuationToken" not in out
    assert "<KeyCount>2</KeyCount>" in out


def test_faultproxy_fails_chosen_requests(s3_trials: S3Backend, tmp_path: Path) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, ConnectionClosedError
    from rgw import ACCESS_KEY, REGION, SECRET_KEY

    gateway = s3_trials.gateway
    bucket = gateway.bucket("proxy").name
    control, log = tmp_path / "control.json", tmp_path / "faults.jsonl"
    write_control(control, [
        {"id": "slow", "ops": ["get"], "path": "^k/slow$", "fault": "503"},
        {"id": "cut", "ops": ["list"], "path": "^k/$", "fault": "truncate"},
        {"id": "rst", "ops": ["head"], "path": "^k/reset$", "fault": "reset"},
    ])  # fmt: skip
    with FaultProxy(gateway.endpoint, control, log) as proxy:
        # One attempt per call: what each fault does, before boto3's retries hide it.
        s3 = boto3.session.Session().client(
            "s3", endpoint_url=proxy.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 1}
            ),
        )  # fmt: skip
        for key in ("k/a", "k/b", "k/slow", "k/reset"):
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # through the proxy: no rule
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key="k/slow")
        assert exc.value.response["Error"]["Code"] == "SlowDown"
        page = s3.list_objects_v2(Bucket=bucket, Prefix="k/")
        assert page["IsTruncated"] and "NextContinuationToken" not in page
        assert [o["Key"] for o in page["Contents"]] == ["k/a", "k/b"]
        with pytest.raises(ConnectionClosedError):  # RST before any answer
            s3.head_object(Bucket=bucket, Key="k/reset")
        assert s3.get_object(Bucket=bucket, Key="k/a")["Body"].read() == b"x"
    # In order, each once (a retry would repeat one).
    assert list(dict.fromkeys((f["rule"], f["op"]) for f in read_log(log))) == [
        ("slow", "get"), ("cut", "list"), ("rst", "head")
    ]  # fmt: skip
