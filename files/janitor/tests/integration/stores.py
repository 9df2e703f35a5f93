"""A registry store on either backend, as the tests see and change it: paths relative to the
registry's root (`docker/registry/v2/...`), never a filesystem path.

- `FsStore`: a directory (the registry's filesystem driver);
- `S3Store`: a bucket and root directory on the session's RADOS Gateway (its s3 driver).

Objects in a bucket have no utime: `set_mtimes` and `copy_into` go through `rgw.age` and
`rgw.copy`, which write with the gateway's clock set back (see rgw.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from rgw import ACCESS_KEY, REGION, SECRET_KEY, Bucket, without_ca_bundle

V2 = "docker/registry/v2"
REPOSITORIES = f"{V2}/repositories"
BLOBS = f"{V2}/blobs"


@dataclass(frozen=True)
class File:
    size: int
    mtime: float
    content: str  # a digest of the content (an ETag in a bucket)


class Store(ABC):
    backend: str

    @abstractmethod
    def files(self, under: str = "") -> dict[str, File]:
        """Every file below `under` (names relative to it); {} when there is none."""

    @abstractmethod
    def read(self, path: str) -> bytes:
        """FileNotFoundError when it is not there."""

    @abstractmethod
    def write(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def is_file(self, path: str) -> bool: ...

    @abstractmethod
    def listdir(self, path: str) -> set[str]:
        """Names of the entries (files and directories) right below `path`."""

    @abstractmethod
    def set_mtimes(self, mtimes: Mapping[str, float]) -> None: ...

    @abstractmethod
    def delete(self, path: str) -> None:
        """A file or everything below a directory."""

    @abstractmethod
    def copy_into(self, other: Store, dated: Callable[[str], bool] | None = None) -> None:
        """Every file into an empty store of the same backend, with its mtime where `dated`
        says so (default: everywhere). In a bucket a dated copy is the slow kind."""

    @abstractmethod
    def registry_storage_config(self) -> str:
        """The `storage:` entries of the registry's config.yml for this store."""

    @abstractmethod
    def janitor_args(self) -> list[str]: ...

    @abstractmethod
    def janitor_settings(self) -> dict[str, str]:
        """The same as settings for config.load (its keys), for the janitor in-process."""

    @property
    @abstractmethod
    def lock_file(self) -> Path:
        """The janitor's default lock file for this store."""

    def is_dir(self, path: str) -> bool:
        return bool(self.listdir(path))

    def age_all(self, when: float, then: Mapping[str, float] | None = None) -> None:
        """Every file (and on a filesystem every directory) dated `when`: an old store;
        then the files in `then` dated as it says (in one pass on a bucket)."""
        self.set_mtimes({**dict.fromkeys(self.files(), when), **(then or {})})

    def read_text(self, path: str) -> str:
        return self.read(path).decode()

    def janitor_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return dict(env)

    def registry_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return dict(env)

    def fingerprint(self, under: str = "") -> str:
        """Changes when any file below `under` is added, removed, rewritten or re-dated."""
        h = hashlib.sha256()
        for name, f in sorted(self.files(under).items()):
            h.update(f"{name} {f.size} {f.mtime} {f.content}\n".encode())
        return h.hexdigest()


class FsStore(Store):
    backend = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"FsStore({self.root})"

    def files(self, under: str = "") -> dict[str, File]:
        base = self.root / under if under else self.root
        out: dict[str, File] = {}
        for dirpath, _, filenames in os.walk(base):
            for n in filenames:
                p = Path(dirpath) / n
                st = p.lstat()
                content = (
                    hashlib.sha256(p.read_bytes()).hexdigest()
                    if p.is_file() and st.st_size < 1 << 20
                    else ""
                )
                out[str(p.relative_to(base))] = File(st.st_size, st.st_mtime, content)
        return out

    def read(self, path: str) -> bytes:
        p = self.root / path
        if not p.is_file():
            raise FileNotFoundError(path)
        return p.read_bytes()

    def write(self, path: str, data: bytes) -> None:
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def is_file(self, path: str) -> bool:
        return (self.root / path).is_file()

    def listdir(self, path: str) -> set[str]:
        p = self.root / path
        return set(os.listdir(p)) if p.is_dir() else set()

    def set_mtimes(self, mtimes: Mapping[str, float]) -> None:
        for path, when in mtimes.items():
            os.utime(self.root / path, (when, when), follow_symlinks=False)

    def age_all(self, when: float, then: Mapping[str, float] | None = None) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root, topdown=False):
            for n in filenames + dirnames:
                os.utime(os.path.join(dirpath, n), (when, when), follow_symlinks=False)
        self.set_mtimes(then or {})

    def delete(self, path: str) -> None:
        p = self.root / path
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    def copy_into(self, other: Store, dated: Callable[[str], bool] | None = None) -> None:
        assert isinstance(other, FsStore)
        shutil.copytree(self.root, other.root, symlinks=True, dirs_exist_ok=True)

    def registry_storage_config(self) -> str:
        return f"  filesystem:\n    rootdirectory: {self.root}\n"

    def janitor_args(self) -> list[str]:
        return []  # the data directory is the store

    def janitor_settings(self) -> dict[str, str]:
        return {"data_dir": str(self.root)}

    @property
    def lock_file(self) -> Path:
        return self.root / ".registry-janitor.lock"


class S3Store(Store):
    backend = "s3"

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.gateway = bucket.gateway
        self.prefix = bucket.prefix
        self.s3 = bucket.client()

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket.name}/{self.prefix})"

    def _key(self, path: str) -> str:
        return f"{self.prefix}{path}"

    def files(self, under: str = "") -> dict[str, File]:
        prefix = self._key(f"{under}/" if under else "")
        return {
            key[len(prefix) :]: File(
                int(obj["Size"]), obj["LastModified"].timestamp(), str(obj["ETag"])
            )
            for key, obj in self.gateway.objects(self.bucket.name, prefix).items()
        }

    def read(self, path: str) -> bytes:
        try:
            resp = self.s3.get_object(Bucket=self.bucket.name, Key=self._key(path))
        except self.s3.exceptions.NoSuchKey:
            raise FileNotFoundError(path) from None
        data: bytes = resp["Body"].read()
        return data

    def write(self, path: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket.name, Key=self._key(path), Body=data)

    def is_file(self, path: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket.name, Key=self._key(path))
        except self.s3.exceptions.ClientError:
            return False
        return True

    def listdir(self, path: str) -> set[str]:
        prefix = self._key(f"{path}/" if path else "")
        names: set[str] = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.name, Prefix=prefix, Delimiter="/"
        ):
            names |= {
                p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes") or []
            }
            names |= {o["Key"][len(prefix) :] for o in page.get("Contents") or []}
        return names - {""}

    def set_mtimes(self, mtimes: Mapping[str, float]) -> None:
        self.gateway.age(self.bucket.name, {self._key(p): when for p, when in mtimes.items()})

    def delete(self, path: str) -> None:
        keys = [self._key(path)] + [self._key(f"{path}/{n}") for n in self.files(path)]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket.name,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )

    def copy_into(self, other: Store, dated: Callable[[str], bool] | None = None) -> None:
        assert isinstance(other, S3Store)
        objects = self.gateway.objects(self.bucket.name, self.prefix)
        keep = {k for k in objects if dated is None or dated(k[len(self.prefix) :])}
        self.gateway.copy(
            self.bucket.name,
            other.bucket.name,
            {
                key: (
                    other.prefix + key[len(self.prefix) :],
                    objects[key]["LastModified"].timestamp(),
                )
                for key in keep
            },
        )
        plain = [k for k in objects if k not in keep]
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda key: self.s3.copy_object(
                        Bucket=other.bucket.name,
                        Key=other.prefix + key[len(self.prefix) :],
                        CopySource={"Bucket": self.bucket.name, "Key": key},
                    ),
                    plain,
                )
            )

    def upload(self, root: Path, dated: Callable[[str], bool] | None = None) -> None:
        """Every file below a local directory, with its mtime where `dated` says so."""
        files = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
        keep = {n for n in files if dated is None or dated(n)}
        self.gateway.upload(
            self.bucket.name,
            {self._key(n): (files[n], files[n].stat().st_mtime) for n in keep},
        )
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: self.s3.put_object(
                        Bucket=self.bucket.name, Key=self._key(n), Body=files[n].read_bytes()
                    ),
                    [n for n in files if n not in keep],
                )
            )

    def registry_storage_config(self) -> str:
        return (
            "  s3:\n"
            f"    accesskey: {ACCESS_KEY}\n"
            f"    secretkey: {SECRET_KEY}\n"
            f"    region: {REGION}\n"
            f"    regionendpoint: {self.gateway.endpoint}\n"
            f"    bucket: {self.bucket.name}\n"
            f"    rootdirectory: /{self.bucket.root}\n"
            "    secure: false\n"
            # Pulls go through the registry, not to presigned URLs on the gateway.
            "  redirect:\n    disable: true\n"
        )

    def janitor_args(self) -> list[str]:
        return [
            "--storage", "s3", "--s3-endpoint", self.gateway.endpoint,
            "--s3-bucket", self.bucket.name, "--s3-root-directory", self.bucket.root,
            "--s3-region", REGION,
        ]  # fmt: skip

    def janitor_settings(self) -> dict[str, str]:
        return {
            "storage": "s3",
            "s3_endpoint": self.gateway.endpoint,
            "s3_bucket": self.bucket.name,
            "s3_root_directory": self.bucket.root,
            "s3_region": REGION,
        }

    def janitor_env(self, env: Mapping[str, str]) -> dict[str, str]:
        # Credentials only in the environment; without AWS_CA_BUNDLE for the registry's
        # garbage-collect that the janitor may start (GC_ENGINE=registry).
        return without_ca_bundle(env) | {
            "JANITOR_S3_ACCESS_KEY": ACCESS_KEY,
            "JANITOR_S3_SECRET_KEY": SECRET_KEY,
        }

    def registry_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return without_ca_bundle(env)

    @property
    def lock_file(self) -> Path:
        return Path(tempfile.gettempdir()) / f"registry-janitor-{self.bucket.name}.lock"


def store_factory(backend: str, request: pytest.FixtureRequest) -> Callable[[str], Store | None]:
    """hint -> a new, empty store on the backend (None: the registry's own directory). A
    bucket comes from the session's RADOS Gateway, started on first use."""
    if backend == "filesystem":
        return lambda hint: None
    gateway = request.getfixturevalue("rgw")
    return lambda hint: S3Store(gateway.bucket(hint))


def check_stores(
    check: Callable[[Path, int, Callable[[str], Store | None]], tuple[int, int]],
    seeds: list[int],
    root: Path,
    make: Callable[[str], Store | None],
    backend: str,
) -> list[tuple[int, int]]:
    """Runs `check(dir, seed, make)` on every seed, four at a time (most of the time is the
    registry's garbage-collect), and fails naming every seed whose store differed. Returns
    (blobs, deleted by both) per store."""
    failures: list[str] = []
    sizes: list[tuple[int, int]] = []

    def one(seed: int) -> None:
        try:
            sizes.append(check(root / str(seed), seed, make))
        except AssertionError as exc:
            lines = str(exc).strip().splitlines() or ["?"]
            failures.append(f"seed {seed}: {lines[0][:300]} ... {lines[-1][-700:]}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, seeds))
    print(f"{backend}: {len(sizes)} stores, {sum(b for b, _ in sizes)} blobs, "
          f"{sum(e for _, e in sizes)} deleted by both")  # fmt: skip
    assert failures == [], f"{len(failures)} of {len(seeds)} stores differ:\n" + "\n".join(failures)
    return sizes
