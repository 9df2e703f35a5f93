"""A real SMB server and client for tests: Samba's smbd on 127.0.0.1, mounted with rclone.

Production keeps the registry's data on a Hetzner Storage Box: Samba, SMB 3 with encryption
required, no POSIX extensions, mounted by the kernel's cifs client. The kernel of the test
machines has no cifs module, so the client here is `rclone mount` (FUSE), whose `smb` backend
speaks SMB 3 to a real smbd. Samba decides what the share does (case-insensitive names,
delete-pending, rename rules); rclone adds its own caches in front (see docs/smb.md for
where it differs from the kernel's client).

Fixtures (imported by the suite's top conftest, so every test folder can use them):

- `smb_share`: a fresh, empty directory on a share set up like a Storage Box
  (case-insensitive, as Samba is for SMB 3 clients without POSIX extensions);
- `smb_share_case_sensitive`: the same on a share with `case sensitive = yes`;
- `smb_share_any`: parametrised over both flavours.

Each yields an `SmbDir`: `.path` (on the mount), `.server_path` (the same directory as Samba
stores it, to look behind the client's caches) and `.flavour` / `.case_sensitive`.
One smbd serves every flavour and each flavour's mount starts once per test session
(a few seconds), on first use. Tests using them get the `smb` marker. When smbd, rclone or
FUSE are missing they are skipped with the reason, or fail when the CI variable is set.
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import servers
from servers import free_port

SMBD = shutil.which("smbd") or ("/usr/sbin/smbd" if os.access("/usr/sbin/smbd", os.X_OK) else None)
SMBPASSWD = shutil.which("smbpasswd")
RCLONE = shutil.which("rclone")
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")

USER = "root"  # smbd must run as root to act as a user; the share's files are root's
PASSWORD = "registry-cache-test"

# Share options per flavour. Samba's default `case sensitive = auto` means case-insensitive
# for every SMB 2/3 client (only SMB1 Unix extensions switch it off): that is what a
# Hetzner Storage Box shows a Linux client, and what `storagebox` models. No POSIX
# extensions: SMB1 is off (server min protocol), and Debian's Samba has no SMB3 ones.
SHARE_DEFAULTS = {"read only": "no"}
FLAVOURS: dict[str, dict[str, str]] = {
    "storagebox": {},
    "case-sensitive": {
        "case sensitive": "yes",
        "preserve case": "yes",
        "short preserve case": "yes",
    },
    # For failure tests: a share the server refuses writes to.
    "read-only": {"read only": "yes"},
}

DIR_CACHE_SECONDS = 1
# rclone's caches, kept short so a test sees the server's state within about a second
# (the kernel's cifs client caches attributes for 1 s by default, actimeo=1):
# - dir-cache-time: how long a directory listing is trusted; rclone looks names up in it,
#   so a name made by another client (or by the server's case folding) shows up late;
# - attr-timeout: how long the kernel caches a file's attributes (size, mtime);
# - vfs-write-back stays at its default, 5 s: rclone uploads a closed file that much later
#   (the cifs client writes back on close). Shorter is not closer to production: a rename
#   or delete that meets rclone's own upload in progress fails with a sharing violation
#   (EIO), which the registry's upload commit then hits. `SmbDir.sync()` waits for it.
RCLONE_MOUNT_FLAGS = [
    "--vfs-cache-mode=writes",  # needed for the registry: it opens files read-write
    f"--dir-cache-time={DIR_CACHE_SECONDS}s",
    f"--attr-timeout={DIR_CACHE_SECONDS}s",
    "--poll-interval=0",  # the smb backend cannot poll for changes
]


def missing() -> str:
    """What is missing to run SMB tests here, or "" when they can run."""
    need = []
    if SMBD is None or SMBPASSWD is None:
        need.append("samba (apt-get install samba)")
    if RCLONE is None:
        need.append("rclone (apt-get install rclone)")
    if FUSERMOUNT is None or not os.path.exists("/dev/fuse"):
        need.append("FUSE (apt-get install fuse3, and /dev/fuse)")
    if os.geteuid() != 0:
        need.append("root (smbd switches to the share's user)")
    return "; ".join(need)


def require() -> None:
    """Skips the calling test when SMB tests cannot run here; fails it under CI."""
    servers.require("SMB", missing())


class SambaServer:
    """smbd on 127.0.0.1:<free port> serving one share per flavour from `workdir/shares`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "smb.conf"
        self.log = workdir / "smbd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        for d in ("private", "state", "lock", "cache", "pid", "logs"):
            (workdir / d).mkdir(parents=True, exist_ok=True)

    def share_path(self, flavour: str) -> Path:
        return self.workdir / "shares" / flavour

    def write_config(self) -> None:
        w = self.workdir
        text = (
            "[global]\n"
            "  server role = standalone server\n"
            "  interfaces = lo\n  bind interfaces only = yes\n"
            f"  smb ports = {self.port}\n"
            "  disable netbios = yes\n"
            # What a Storage Box requires of its clients: SMB 3, encrypted.
            "  server min protocol = SMB3\n"
            "  server smb encrypt = required\n"
            f"  private dir = {w}/private\n  state directory = {w}/state\n"
            f"  lock directory = {w}/lock\n  cache directory = {w}/cache\n"
            f"  pid directory = {w}/pid\n  ncalrpc dir = {w}/lock/ncalrpc\n"
            f"  passdb backend = tdbsam:{w}/private/passdb.tdb\n"
            f"  log file = {w}/logs/log.%m\n  max log size = 1000\n"
            "  load printers = no\n  printcap name = /dev/null\n  disable spoolss = yes\n"
        )
        for flavour, options in FLAVOURS.items():
            path = self.share_path(flavour)
            path.mkdir(parents=True, exist_ok=True)
            text += f"[{flavour}]\n  path = {path}\n"
            text += "".join(f"  {k} = {v}\n" for k, v in {**SHARE_DEFAULTS, **options}.items())
        self.config.write_text(text)

    def start(self) -> None:
        assert SMBD is not None and SMBPASSWD is not None
        self.write_config()
        subprocess.run(
            [SMBPASSWD, "-c", str(self.config), "-s", "-a", USER],
            input=f"{PASSWORD}\n{PASSWORD}\n",
            text=True,
            check=True,
            capture_output=True,
        )
        with self.log.open("ab") as log:
            # Its own session: smbd forks a child per connection; stop() ends the group.
            self.proc = subprocess.Popen(
                [
                    SMBD,
                    "--foreground",
                    "--no-process-group",
                    "--debug-stdout",
                    "--configfile",
                    str(self.config),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"smbd did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def _dirty(meta: Path) -> bool:
    try:
        return bool(meta.is_file() and json.loads(meta.read_text()).get("Dirty"))
    except (OSError, ValueError):
        return True  # being rewritten right now


class RcloneMount:
    """`rclone mount` of one share of `server` on `mountpoint`."""

    def __init__(self, server: SambaServer, flavour: str, workdir: Path) -> None:
        self.server = server
        self.flavour = flavour
        self.mountpoint = workdir / "mnt"
        self.cache = workdir / "cache"
        self.log = workdir / "rclone.log"
        self.rclone_config = workdir / "rclone.conf"  # empty: the remote comes from env
        self.proc: subprocess.Popen[bytes] | None = None
        for d in (self.mountpoint, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.rclone_config.touch()

    def env(self) -> dict[str, str]:
        assert RCLONE is not None
        obscured = subprocess.run(
            [RCLONE, "obscure", PASSWORD], capture_output=True, text=True, check=True
        ).stdout.strip()
        return {
            **os.environ,
            "RCLONE_CONFIG": str(self.rclone_config),
            "RCLONE_SMB_HOST": "127.0.0.1",
            "RCLONE_SMB_PORT": str(self.server.port),
            "RCLONE_SMB_USER": USER,
            "RCLONE_SMB_PASS": obscured,  # in the environment, not on the command line
            # rclone's own notion, used by its sync logic; tell it what the share does.
            "RCLONE_SMB_CASE_INSENSITIVE": "false" if self.flavour == "case-sensitive" else "true",
        }

    def start(self) -> None:
        assert RCLONE is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    RCLONE,
                    "mount",
                    f":smb:{self.flavour}",
                    str(self.mountpoint),
                    *RCLONE_MOUNT_FLAGS,
                    f"--cache-dir={self.cache}",
                    "--log-level=NOTICE",
                ],
                stdout=log,
                stderr=log,
                env=self.env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if os.path.ismount(self.mountpoint):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rclone mount did not come up: {self.log.read_text()[-3000:]}")

    def wait_written_back(self, timeout: float = 60) -> None:
        """Returns once rclone has uploaded every file closed so far (it keeps a "Dirty"
        flag per cached file) and its directory cache has expired: the mount and the
        server then agree."""
        deadline = time.monotonic() + timeout
        while any(_dirty(meta) for meta in (self.cache / "vfsMeta").rglob("*")):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"rclone still has files to upload after {timeout} s")
            time.sleep(0.2)
        time.sleep(DIR_CACHE_SECONDS + 0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """rclone itself can crash (Debian's 1.60.1 dereferences nil in its smb backend
        after a failed upload): say so with the end of its log instead of a timeout."""
        if not self.alive():
            tail = self.log.read_text(errors="replace").splitlines()
            fatal = [i for i, line in enumerate(tail) if line.startswith(("fatal error", "panic"))]
            start = max(0, (fatal[0] if fatal else len(tail)) - 5)
            raise RuntimeError(
                f"the rclone mount of {self.flavour} died; {self.log}:\n"
                + "\n".join(tail[start : start + 12])
            )

    def remount(self) -> None:
        """A fresh client: uploads what is pending, unmounts, drops rclone's cache and
        mounts again. Nothing may have files open on the mount."""
        self.wait_written_back()
        self.stop()
        shutil.rmtree(self.cache)
        self.cache.mkdir()
        self.start()

    def stop(self) -> None:
        # /proc/mounts, not os.path.ismount: the mount of a crashed client cannot be stat'ed.
        mounts = Path("/proc/mounts").read_text().split()
        if str(self.mountpoint) in mounts:
            assert FUSERMOUNT is not None
            done = subprocess.run(
                [FUSERMOUNT, "-u", str(self.mountpoint)], capture_output=True, check=False
            )
            if done.returncode != 0:  # still busy (a test left a file open): detach it
                subprocess.run(
                    [FUSERMOUNT, "-u", "-z", str(self.mountpoint)], capture_output=True, check=False
                )
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@dataclass(frozen=True)
class SmbDir:
    """A fresh directory on a real SMB share, seen through the client mount."""

    path: Path  # on the mount: what the code under test uses
    server_path: Path  # the same directory in Samba's own storage (behind every cache)
    flavour: str  # "storagebox", "case-sensitive" or "read-only"
    mount: Path  # the mount's root
    client: RcloneMount  # the mount's process (sync() waits for its uploads)

    @property
    def case_sensitive(self) -> bool:
        return self.flavour == "case-sensitive"

    def sync(self) -> None:
        """Waits until the server has everything written through the mount so far, and the
        mount shows the server's state (see RcloneMount.wait_written_back)."""
        self.client.wait_written_back()

    def remount(self) -> None:
        """Replaces the client by a fresh one (no cache): it sees only what the server has.
        Stop whatever has files open on the mount first."""
        self.client.remount()


class SmbSession:
    """One smbd for the test session; a mount per flavour, started on first use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = SambaServer(workdir / "samba")
        self.mounts: dict[str, RcloneMount] = {}
        self.counter = itertools.count()

    def mount(self, flavour: str) -> RcloneMount:
        if flavour in self.mounts and not self.mounts[flavour].alive():
            # A client that crashed in an earlier test (that test failed with its log): the
            # next test gets a fresh one instead of "Transport endpoint is not connected".
            self.mounts.pop(flavour).stop()
        if flavour not in self.mounts:
            m = RcloneMount(self.server, flavour, self.workdir / f"client-{flavour}")
            m.start()
            self.mounts[flavour] = m
        return self.mounts[flavour]

    def fresh_dir(self, flavour: str, name: str) -> SmbDir:
        m = self.mount(flavour)
        leaf = f"{next(self.counter):03d}-{name}"[:80]
        server_path = self.server.share_path(flavour) / leaf
        if flavour == "read-only":
            server_path.mkdir()  # the client cannot write here: made on the server side
            path = m.mountpoint / leaf
        else:
            path = m.mountpoint / leaf
            path.mkdir()
        return SmbDir(path, server_path, flavour, m.mountpoint, m)

    def close(self) -> None:
        for m in self.mounts.values():
            m.stop()
        self.server.stop()


def _leaf_name(request: pytest.FixtureRequest) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)


@pytest.fixture(scope="session")
def smb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmbSession]:
    require()
    session = SmbSession(tmp_path_factory.mktemp("smb"))
    try:
        session.server.start()
        yield session
    finally:
        session.close()


@pytest.fixture
def smb_share(smb_session: SmbSession, request: pytest.FixtureRequest) -> SmbDir:
    """A fresh directory on a Storage-Box-like share (case-insensitive)."""
    return smb_session.fresh_dir("storagebox", _leaf_name(request))


@pytest.fixture
def smb_share_case_sensitive(smb_session: SmbSession, request: pytest.FixtureRequest) -> SmbDir:
    """A fresh directory on a case-sensitive share."""
    return smb_session.fresh_dir("case-sensitive", _leaf_name(request))


@pytest.fixture(params=["storagebox", "case-sensitive"])
def smb_share_any(smb_session: SmbSession, request: pytest.FixtureRequest) -> SmbDir:
    """A fresh directory on each flavour in turn (`.flavour` says which)."""
    return smb_session.fresh_dir(str(request.param), _leaf_name(request))


@pytest.fixture
def smb_share_read_only(smb_session: SmbSession, request: pytest.FixtureRequest) -> SmbDir:
    """A directory on a share the server refuses writes to (for failure tests)."""
    return smb_session.fresh_dir("read-only", _leaf_name(request))


SMB_FIXTURES = frozenset(
    {"smb_session", "smb_share", "smb_share_case_sensitive", "smb_share_any", "smb_share_read_only"}
)
