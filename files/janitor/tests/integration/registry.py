"""A real Distribution registry process on 127.0.0.1 and skopeo as its client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
SKOPEO = shutil.which("skopeo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, root: Path, port: int, *, blobdescriptor_cache: bool) -> None:
    cache = "  cache:\n    blobdescriptor: inmemory\n" if blobdescriptor_cache else ""
    path.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
        f"{cache}"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )


class Registry:
    """`root` puts the storage elsewhere (an SMB share); config and log stay in `workdir`."""

    def __init__(
        self, workdir: Path, *, blobdescriptor_cache: bool = False, root: Path | None = None
    ) -> None:
        assert REGISTRY_BIN is not None
        workdir.mkdir(parents=True, exist_ok=True)
        self.root = root if root is not None else workdir / "root"
        self.root.mkdir(parents=True, exist_ok=root is not None)
        self.port = free_port()
        self.config = workdir / "config.yml"
        self.log = workdir / "registry.log"
        write_config(self.config, self.root, self.port, blobdescriptor_cache=blobdescriptor_cache)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def repositories(self) -> Path:
        return self.root / "docker" / "registry" / "v2" / "repositories"

    @property
    def blobs(self) -> Path:
        return self.root / "docker" / "registry" / "v2" / "blobs"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN or "", "serve", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"registry did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def tags(self, repo: str) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/{repo}/tags/list", timeout=5) as r:
                return sorted(json.load(r).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def catalog(self) -> list[str]:
        with urllib.request.urlopen(f"http://{self.host}/v2/_catalog", timeout=5) as r:
            return sorted(json.load(r).get("repositories") or [])

    def age_revisions(self, when: float) -> None:
        """Pretend every manifest was pushed at `when`: the janitor leaves unreachable
        manifests younger than an hour alone (a multi-arch push may still be under way)."""
        for link in self.repositories.glob("**/_manifests/revisions/sha256/*/link"):
            os.utime(link, (when, when))

    def age_blobs(self, when: float) -> None:
        """Pretend every blob was uploaded at `when` (past any garbage collection grace)."""
        for data in self.blobs.glob("sha256/*/*/data"):
            os.utime(data, (when, when))

    def blob_exists(self, digest: str) -> bool:
        hexpart = digest.removeprefix("sha256:")
        return (self.blobs / "sha256" / hexpart[:2] / hexpart / "data").is_file()


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert SKOPEO is not None
    return subprocess.run(
        [SKOPEO, "--insecure-policy", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")},
    )


def push(layout: Path, tag: str, registry: Registry, ref: str, *, multi: bool = False) -> None:
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        *(["--all"] if multi else []),
        f"oci:{layout}:{tag}",
        f"docker://{registry.host}/{ref}",
    )


def pull(
    registry: Registry, ref: str, dest: Path, *, multi: bool = False
) -> subprocess.CompletedProcess[str]:
    """Copies every blob (skopeo verifies each digest); check the result's returncode."""
    return skopeo(
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        *(["--all"] if multi else []),
        f"docker://{registry.host}/{ref}",
        f"oci:{dest}:x",
        check=False,
    )


@contextlib.contextmanager
def running(
    workdir: Path, *, blobdescriptor_cache: bool = False, root: Path | None = None
) -> Iterator[Registry]:
    reg = Registry(workdir, blobdescriptor_cache=blobdescriptor_cache, root=root)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()
