"""A real Distribution registry process on 127.0.0.1 and skopeo as its client.

The registry keeps its store on one of two backends (`BACKENDS`): a directory (its
filesystem driver) or a bucket on the test session's RADOS Gateway (its s3 driver). Tests
look at and change the store through `Registry.store` (stores.py), never through paths,
so the same test runs on both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from servers import free_port
from stores import BLOBS, REPOSITORIES, FsStore, Store

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
SKOPEO = shutil.which("skopeo")
BACKENDS = ("filesystem", "s3")
_REVISION_LINK = re.compile(r".*/_manifests/revisions/sha256/[0-9a-f]{64}/link")
_BLOB_DATA = re.compile(r"sha256/[0-9a-f]{2}/[0-9a-f]{64}/data")


def write_config(
    path: Path,
    store: Store,
    port: int,
    *,
    blobdescriptor_cache: bool,
    log_level: str = "warn",
    log_formatter: str = "text",
    notify: tuple[str, str] | None = None,
    debug_port: int = 0,
) -> None:
    cache = "  cache:\n    blobdescriptor: inmemory\n" if blobdescriptor_cache else ""
    notifications = (
        ""
        if notify is None
        else "notifications:\n  endpoints:\n    - name: registry-janitor\n"
        f"      url: {notify[0]}\n"
        f"      headers:\n        Authorization: [Bearer {notify[1]}]\n"
        "      timeout: 2s\n      threshold: 3\n      backoff: 200ms\n"
        # As the registry role configures it: manifest events only.
        "      ignoredmediatypes:\n        - application/octet-stream\n"
    )
    path.write_text(
        "version: 0.1\n"
        f"log:\n  level: {log_level}\n  formatter: {log_formatter}\n"
        "  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"{store.registry_storage_config()}"
        "  delete:\n    enabled: true\n"
        f"{cache}"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        # The debug server's /debug/vars: how many notifications are still queued.
        + (f"  debug:\n    addr: 127.0.0.1:{debug_port}\n" if debug_port else "")
        + f"{notifications}"
    )


class Registry:
    """`root` puts a filesystem store elsewhere (an SMB share), `store` names any store (a
    bucket); config and log stay in `workdir`. `root` is the janitor's data directory: for
    a bucket an empty local directory. `notify`: (url, token) of a notifications endpoint."""

    def __init__(
        self,
        workdir: Path,
        *,
        blobdescriptor_cache: bool = False,
        root: Path | None = None,
        store: Store | None = None,
        log_level: str = "warn",
        log_formatter: str = "text",
        notify: tuple[str, str] | None = None,
    ) -> None:
        assert REGISTRY_BIN is not None
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.root = root if root is not None else workdir / "root"
        self.root.mkdir(parents=True, exist_ok=root is not None)
        self.store: Store = store if store is not None else FsStore(self.root)
        self.port = free_port()
        self.debug_port = free_port() if notify is not None else 0
        self.config = workdir / "config.yml"
        self.log = workdir / "registry.log"
        self.blobdescriptor_cache = blobdescriptor_cache
        write_config(
            self.config,
            self.store,
            self.port,
            blobdescriptor_cache=blobdescriptor_cache,
            log_level=log_level,
            log_formatter=log_formatter,
            notify=notify,
            debug_port=self.debug_port,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def debug_vars(self) -> str:
        """The debug server's expvar page (registries with `notify` only)."""
        return f"http://127.0.0.1:{self.debug_port}/debug/vars"

    @property
    def repositories(self) -> Path:
        """Filesystem stores only (SMB tests); backend-neutral tests use `store`."""
        return self.root / "docker" / "registry" / "v2" / "repositories"

    @property
    def blobs(self) -> Path:
        return self.root / "docker" / "registry" / "v2" / "blobs"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN or "", "serve", str(self.config)],
                stdout=log,
                stderr=log,
                env=self.store.registry_env(os.environ),
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
        links = [f"{REPOSITORIES}/{p}" for p in self.store.files(REPOSITORIES)]
        self.store.set_mtimes({p: when for p in links if _REVISION_LINK.fullmatch(p)})

    def age_blobs(self, when: float) -> None:
        """Pretend every blob was uploaded at `when` (past any garbage collection grace)."""
        data = [p for p in self.store.files(BLOBS) if _BLOB_DATA.fullmatch(p)]
        self.store.set_mtimes({f"{BLOBS}/{p}": when for p in data})

    def set_push_time(self, ref: str, when: float) -> None:
        """The tag's current/link mtime: what the janitor reads as its push time."""
        repo, tag = ref.rsplit(":", 1)
        self.store.set_mtimes({tag_link(repo, tag): when})

    def blob_exists(self, digest: str) -> bool:
        return self.store.is_file(blob_data(digest))

    def janitor_args(self) -> list[str]:
        """Where the janitor finds this store (and the registry config for its GC)."""
        return [
            "--data-dir",
            str(self.root),
            *self.store.janitor_args(),
            "--registry-config",
            str(self.config),
            "--registry-bin",
            REGISTRY_BIN or "registry",
        ]


def tag_link(repo: str, tag: str) -> str:
    return f"{REPOSITORIES}/{repo}/_manifests/tags/{tag}/current/link"


def revision_link(repo: str, digest: str) -> str:
    return (
        f"{REPOSITORIES}/{repo}/_manifests/revisions/sha256/{digest.removeprefix('sha256:')}/link"
    )


def blob_data(digest: str) -> str:
    hexpart = digest.removeprefix("sha256:")
    return f"{BLOBS}/sha256/{hexpart[:2]}/{hexpart}/data"


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
    workdir: Path,
    *,
    blobdescriptor_cache: bool = False,
    root: Path | None = None,
    store: Store | None = None,
) -> Iterator[Registry]:
    reg = Registry(workdir, blobdescriptor_cache=blobdescriptor_cache, root=root, store=store)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()
