"""A real S3 server for tests: Ceph's RADOS Gateway, single node, on 127.0.0.1.

From Debian's packages (ceph-mon ceph-osd radosgw): one monitor, one OSD keeping its data in
memory (memstore, capped), pool size 1, no cephx (`auth ... = none` needs
`ms mon client mode = crc` or radosgw hangs at start), radosgw with the beast frontend on a
free loopback port (`tcp_nodelay=1`, or small GETs take ~48 ms). From nothing to an S3
endpoint in about 15 s; one gateway serves the whole test session, each test gets its own
bucket (`RadosGateway.bucket`).

**Setting an object's mtime.** S3 has no utime: LastModified is the server's clock at the
write. The tests need old objects (grace periods, push order), so a second radosgw on the
same cluster (same buckets) runs under libfaketime (Debian's `faketime`), reading its clock
offset from a file on every call. To give objects a past mtime, `age()` sets the offset,
copies each object onto itself through that gateway, from a helper process under the same
offset (requests must be signed with the gateway's clock: radosgw refuses a skew over 15
minutes), and sets the offset back to 0. Everything else (registry, janitor, tests) talks to
the first gateway, whose clock is the real one, so aging can run while they work; one aging
at a time.

The fixtures (`rgw`, in conftest.py) skip, with the reason, when a package is missing, and
fail instead under CI.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import servers
from servers import free_port

CEPH_MON = shutil.which("ceph-mon")
CEPH_OSD = shutil.which("ceph-osd")
RADOSGW = shutil.which("radosgw")
RADOSGW_ADMIN = shutil.which("radosgw-admin")
CEPH = shutil.which("ceph")
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
)
FAKETIME = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)

ACCESS_KEY = "registry-cache-test"
SECRET_KEY = "rgw-test-Hq3L9xV7-not-a-real-secret"
REGION = "us-east-1"
START_TIMEOUT = 120
_names = itertools.count()


def missing() -> str:
    need = []
    if not all((CEPH_MON, CEPH_OSD, RADOSGW, RADOSGW_ADMIN, CEPH)):
        need.append("ceph-mon ceph-osd radosgw (apt-get install ceph-mon ceph-osd radosgw)")
    if FAKETIME is None:
        need.append("faketime (apt-get install faketime)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        need.append("boto3 (pip install 'registry-janitor[s3]')")
    return "; ".join(need)


def require() -> None:
    servers.require("S3", missing())


def without_ca_bundle(env: Mapping[str, str]) -> dict[str, str]:
    """The registry's s3 driver (2.8) panics at start when AWS_CA_BUNDLE is set."""
    return {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}


@dataclass(frozen=True)
class Bucket:
    """Where a test's store lives: a bucket, and a root directory prefix in it."""

    gateway: RadosGateway
    name: str
    root: str = "registry"  # the registry's rootdirectory, without slashes

    @property
    def prefix(self) -> str:
        return f"{self.root}/" if self.root else ""

    def client(self) -> Any:
        return self.gateway.client()


class RadosGateway:
    def __init__(self, workdir: Path, memory_mib: int = 2048) -> None:
        self.workdir = workdir
        self.memory_mib = memory_mib
        self.mon_port = free_port()
        self.port = free_port()
        self.aging_port = free_port()  # the gateway whose clock `age` sets back
        self._aging = threading.Lock()
        self.config = workdir / "ceph.conf"
        self.offset_file = workdir / "faketime"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def aging_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.aging_port}"

    def _write_config(self) -> None:
        w = self.workdir
        self.config.write_text(
            "[global]\n"
            f"fsid = {uuid.uuid4()}\n"
            f"mon host = 127.0.0.1:{self.mon_port}\n"
            "mon initial members = a\n"
            "auth cluster required = none\nauth service required = none\n"
            "auth client required = none\n"
            "ms mon client mode = crc\n"
            "osd pool default size = 1\nosd pool default min size = 1\n"
            "osd pool default pg num = 8\nosd pool default pgp num = 8\n"
            "osd pool default pg autoscale mode = off\n"
            "mon allow pool size one = true\nmon warn on pool no redundancy = false\n"
            "osd crush chooseleaf type = 0\n"
            f"run dir = {w}/run\nlog file = {w}/log/$name.log\n"
            f"admin socket = {w}/run/$name.$pid.asok\n"
            f"mon data = {w}/mon\nosd data = {w}/osd\n"
            "osd objectstore = memstore\n"
            f"memstore device bytes = {self.memory_mib * 1024 * 1024}\n"
            "[client.rgw]\n"
            f"rgw frontends = beast endpoint=127.0.0.1:{self.port} tcp_nodelay=1\n"
            f"rgw data = {w}/rgw\n"
            "rgw enable usage log = false\n"
            # Tails of deleted objects are freed after this long (default 2 h): tests and
            # benchmarks delete a lot, and the OSD keeps its data in memory.
            "rgw gc obj min wait = 60\nrgw gc processor period = 60\n"
            "[client.rgw-aging]\n"
            f"rgw frontends = beast endpoint=127.0.0.1:{self.aging_port} tcp_nodelay=1\n"
            f"rgw data = {w}/rgw-aging\n"
            "rgw enable usage log = false\n"
            # Only writes objects with a past mtime: none of the background work.
            "rgw enable gc threads = false\nrgw enable lc threads = false\n"
            "rgw enable quota threads = false\nrgw dynamic resharding = false\n"
        )

    def _run(self, *cmd: str, timeout: int = 60) -> str:
        result = subprocess.run(
            [*cmd, "-c", str(self.config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def _daemon(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / "log" / f"{name}.out").open("ab")
        self.procs[name] = subprocess.Popen(
            [*cmd, "-f", "-c", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )

    def start(self) -> None:
        for d in ("run", "log", "mon", "osd", "rgw", "rgw-aging"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.offset_file.write_text("+0\n")
        assert CEPH_MON and CEPH_OSD and RADOSGW and CEPH and FAKETIME
        self._run(CEPH_MON, "--mkfs", "-i", "a", "--mon-data", str(self.workdir / "mon"))
        self._daemon("mon", [CEPH_MON, "-i", "a"])
        self._run(CEPH, "osd", "create")
        self._run(CEPH_OSD, "-i", "0", "--mkfs")
        self._daemon("osd", [CEPH_OSD, "-i", "0"])
        self._daemon("rgw", [RADOSGW, "-n", "client.rgw"])
        self._wait(self.port)
        # Started once the first has created its pools.
        self._daemon("rgw-aging", [RADOSGW, "-n", "client.rgw-aging"], env=faked_clock(self))
        self._wait(self.aging_port)
        assert RADOSGW_ADMIN
        self._run(
            RADOSGW_ADMIN, "user", "create", "--uid", "registry-cache", "--display-name",
            "registry-cache tests", "--access-key", ACCESS_KEY, "--secret", SECRET_KEY,
        )  # fmt: skip

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        osd_restarts = 0
        while True:
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                # With auth none the OSD can send its first monitor command before the
                # monitor's map reached it, with the wrong cluster fsid, and exit; a second
                # start finds the map (molecule/s3/files/gateway.sh does the same).
                if name == "osd" and osd_restarts < 4:
                    osd_restarts += 1
                    assert CEPH_OSD
                    self._daemon("osd", [CEPH_OSD, "-i", "0"])
                    continue
                raise RuntimeError(f"{name} exited {proc.returncode}: see {self.workdir}/log")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"radosgw did not answer in {START_TIMEOUT} s: {self.workdir}/log"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        for name in ("rgw-aging", "rgw", "osd", "mon"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # -- S3 ------------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint)
        return self._client

    def bucket(self, hint: str = "test", root: str = "registry") -> Bucket:
        """A new, empty bucket."""
        clean = "".join(c if c.isalnum() else "-" for c in hint.lower())[:30].strip("-")
        name = f"{clean or 'test'}-{next(_names)}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return Bucket(self, name, root)

    def age(self, bucket: str, mtimes: Mapping[str, float]) -> None:
        """Give objects (key -> unix time) that LastModified (whole seconds), in place."""
        self.copy(bucket, bucket, {k: (k, when) for k, when in mtimes.items()})

    def copy(
        self, src_bucket: str, dst_bucket: str, moves: Mapping[str, tuple[str, float]]
    ) -> None:
        """Copy objects (source key -> (target key, LastModified)), server-side."""
        self._write_dated(
            dst_bucket,
            [("copy", f"{src_bucket}/{src}", dst, when) for src, (dst, when) in moves.items()],
        )

    def upload(self, bucket: str, files: Mapping[str, tuple[Path, float]]) -> None:
        """Write local files as objects (key -> (file, LastModified))."""
        self._write_dated(
            bucket, [("put", str(path), key, when) for key, (path, when) in files.items()]
        )

    def _write_dated(self, bucket: str, ops: list[tuple[str, str, str, float]]) -> None:
        if not ops:
            return
        groups: dict[int, list[tuple[str, str, str]]] = {}
        for kind, src, dst, when in ops:
            groups.setdefault(int(when), []).append((kind, src, dst))
        job: dict[str, Any] = {
            "endpoint": self.aging_endpoint,
            "offset_file": str(self.offset_file),
            "bucket": bucket,
            "groups": sorted(groups.items()),
        }
        with self._aging:  # one clock offset at a time
            try:
                result = subprocess.run(
                    [sys.executable, __file__, "write"],
                    check=False,
                    input=json.dumps(job),
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            finally:
                self.offset_file.write_text("+0\n")
        if result.returncode != 0:
            raise RuntimeError(f"writing with a past mtime failed: {result.stderr[-3000:]}")

    def objects(self, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """key -> the listing's entry (Size, LastModified, ETag)."""
        out: dict[str, dict[str, Any]] = {}
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            for obj in page.get("Contents") or []:
                out[obj["Key"]] = obj
        return out


def faked_clock(gw: RadosGateway) -> dict[str, str]:
    """The environment of a process whose clock is offset by what gw.offset_file says."""
    return {
        **os.environ,
        "LD_PRELOAD": FAKETIME or "",
        "FAKETIME_TIMESTAMP_FILE": str(gw.offset_file),
        "FAKETIME_NO_CACHE": "1",
        # Timers and timeouts stay real: only the wall clock moves.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=16,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadosGateway]:
    """One RADOS Gateway for the whole session (started on first use, ~15 s)."""
    require()
    with running(tmp_path_factory.mktemp("rgw")) as gw:
        yield gw


@contextlib.contextmanager
def running(workdir: Path, memory_mib: int = 2048) -> Iterator[RadosGateway]:
    gw = RadosGateway(workdir, memory_mib)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def _write_main() -> None:
    """The helper process: copies or uploads objects through the aging gateway, group by
    group, each group with the gateway's clock set to its time and its requests signed with
    that time. Reads the job as JSON on stdin."""
    import datetime
    from concurrent.futures import ThreadPoolExecutor

    import botocore.auth

    job = json.load(sys.stdin)
    shift = 0.0  # seconds the gateway's clock is off from the real one

    def signing_time(remove_tzinfo: bool = True) -> datetime.datetime:
        now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=shift)
        return now.replace(tzinfo=None) if remove_tzinfo else now

    # Requests must carry the gateway's time (it refuses a skew over 15 minutes); this
    # process only talks to the aging gateway.
    botocore.auth.get_current_datetime = signing_time
    offset = Path(job["offset_file"])
    s3 = s3_client(job["endpoint"])
    bucket = job["bucket"]

    def one(op: list[str]) -> None:
        kind, src, dst = op
        if kind == "put":
            s3.put_object(Bucket=bucket, Key=dst, Body=Path(src).read_bytes())
            return
        src_bucket, _, src_key = src.partition("/")
        same = (src_bucket, src_key) == (bucket, dst)
        s3.copy_object(
            Bucket=bucket,
            Key=dst,
            CopySource={"Bucket": src_bucket, "Key": src_key},
            **({"MetadataDirective": "REPLACE"} if same else {}),
        )

    with ThreadPoolExecutor(8) as pool:
        for when, ops in job["groups"]:
            for i in range(0, len(ops), 32):
                # The gateway's clock half a second into the wanted second, set again for
                # every few requests, so that they all land in it. libfaketime reads the
                # file on every clock call of the gateway.
                shift = int(when) + 0.5 - time.time()
                offset.write_text(f"{shift:+.3f}\n")
                list(pool.map(one, ops[i : i + 32]))
    offset.write_text("+0\n")


if __name__ == "__main__" and sys.argv[1:] == ["write"]:
    _write_main()
