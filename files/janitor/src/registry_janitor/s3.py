"""The storage interface on an S3 bucket, laid out as the registry's s3 driver writes it.

Optional: needs boto3 (`pip install registry-janitor[s3]`, or Debian's python3-boto3),
imported only when JANITOR_STORAGE=s3, so the filesystem install stays standard library only.

**Layout.** The registry's s3 driver stores the file `<path>` of its filesystem layout as the
object `<rootdirectory>/<path>`; a "directory" is only a key prefix. It exists while one
object is below it and is gone with its last object: nothing is ever created or removed for a
directory, and listing one is a `ListObjectsV2` with `Delimiter=/`. The registry decides
what exists from a few objects: a tag resolves through `_manifests/tags/<t>/current/link`
and is listed in `tags/list` while any object is below `_manifests/tags/<t>/`; a manifest
exists in a repository while `_manifests/revisions/sha256/<hex>/link` does; a blob exists
while `blobs/sha256/<xx>/<hex>/data` does (and, for a repository, its `_layers` link).

**No rename.** An object store cannot take a directory out of the registry's view in one
step, so the janitor deletes in an order that keeps the registry consistent after every
single request (executor.py and hold.py ask `renames` and pick this order):

- a tag: its `current/link` first (from then on the tag does not resolve; `tags/list` may
  still name it until its index goes), then the `index/` links listed just before. A crash
  in between leaves a tag without `current/link`, which the next sweep removes as a leftover.
  A push of the same tag meanwhile writes its own `current/link` after its index link, so
  the tag then resolves to the new push; only index links listed before the delete go, and
  the registry never reads the index to serve a tag.
- a revision: its `link`, one object, one request.
- a leftover tag: every object the listing named (none of them is a `current/link`).
- an empty repository: its `_layers` links are held (below), then every "directory" of it
  is checked to be empty (`rmdir` here fails when any object is below, and removes nothing);
  a push that wrote meanwhile makes the check fail and the layer links go back.

**Hold without rename.** The hold (hold.py) must make a blob invisible to the registry and
still be able to put it back: a manifest PUT that checked its blobs before the hold may link
a revision naming it during the settle period. Here a blob is held by *copying* its `data`
into `<rootdirectory>/.registry-janitor-held/blobs/<hex>/data` and then deleting the
original. From the delete on, the registry answers 404 for it, refuses manifests naming it,
and a client uploads it again (to the original key, untouched by the hold). The copy is
server-side (`CopyObject`; multipart copy above 5 GiB): no bytes pass through the janitor.
Each step leaves a state the next run resolves, because every held blob goes back after a
crash:
- killed after the copy, before the delete: the blob exists twice; putting it back finds the
  original there and drops the held copy;
- killed after the delete: only the held copy exists; it is copied back, then dropped.
An upload of the same blob between the copy and the delete is deleted with the original: its
content is the same (content addressed), and it is now in the hold like any held blob, so a
manifest that names it is either refused (the registry checks the blob after the delete) or
linked during the settle period and then puts the blob back.

A copy gets a new LastModified; a blob put back would look freshly uploaded and be spared
for GC_GRACE. So every copy the janitor makes carries the source's mtime in its metadata
(`x-amz-meta-registry-janitor-mtime`), and `stat` answers that (as a rename keeps the mtime on
a filesystem). A listing cannot show metadata: it shows the newer LastModified, so a caller
that finds an object young in a listing stats it before relying on that (gc.py does). An
upload of the same blob replaces the object and its metadata: then it is young, rightly.
To tell whether an object changed, callers compare `Stat.version`: the object's own
LastModified in a stat and in a listing alike (comparing a listed mtime with a carried one
would find every blob once put back "changed" forever, and never collect it again).

A held repository's `_layers` is held the same way (each link copied, then deleted); links
are tiny.

**Times.** mtimes are the objects' LastModified (or the mtime a copy carries, above), in whole
seconds everywhere: `HEAD` and `GET` answer in seconds, listings in milliseconds, and the
janitor compares an mtime it listed with one it read (a push since the scan changes it). A
"directory" has the mtime of the newest object below it (a tag without `current/link`, a
repository's `_layers`).

**Requests.** Independent requests run on the janitor's thread pool (JANITOR_CONCURRENCY),
on one connection pool of that size. Deletes of many keys are batched (`DeleteObjects`, up to
1,000 keys per request). Credentials come from the environment or files (config.py), never
from arguments, and are never logged.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry_janitor.storage import Entry, Files, Stat

log = logging.getLogger(__name__)

# DeleteObjects takes up to 1,000 keys; CopyObject copies up to 5 GiB in one request.
DELETE_BATCH = 1000
COPY_MAX = 5 * 1024**3
COPY_PART = 1024**3  # multipart copy above COPY_MAX, in parts this large
# Errors that mean "this key does not exist". NoSuchBucket is not one: a missing bucket must
# fail the sweep, never look like an empty store.
_GONE = {"NoSuchKey", "404", "NotFound"}
# Object metadata of the janitor's copies: the source's mtime (see "Hold without rename").
MTIME_META = "registry-janitor-mtime"


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint: str = ""  # empty: AWS's own endpoint for the region
    region: str = "us-east-1"
    root_directory: str = ""  # the registry's storage.s3.rootdirectory
    path_style: bool = True
    verify_tls: bool = True
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)

    @property
    def prefix(self) -> str:
        """Key prefix of the registry's root: "" or "<root>/"."""
        root = self.root_directory.strip("/")
        return f"{root}/" if root else ""

    def describe(self) -> str:
        where = self.endpoint or f"AWS {self.region}"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


def _mtime(value: object) -> float:
    """LastModified as whole seconds (see "Times" above)."""
    if isinstance(value, datetime):
        return float(math.floor(value.timestamp()))
    return 0.0


def _stat(response: dict[str, Any], size: int | None = None) -> Stat:
    """The stat of a HEAD or GET response: the mtime a janitor's copy carries, if any."""
    stamp = mtime = _mtime(response.get("LastModified"))
    carried = str((response.get("Metadata") or {}).get(MTIME_META, ""))
    if carried.isdigit():
        mtime = float(carried)
    # `stamp`: the object's own LastModified, what a listing shows too: a caller comparing a
    # listed and a stat'ed object compares versions, not the carried mtime.
    size = int(response.get("ContentLength", 0)) if size is None else size
    return Stat(size, mtime, stamp=stamp)


def client(settings: S3Settings, max_connections: int) -> Any:
    """A boto3 S3 client for the settings (boto3 imported here, on first use)."""
    try:
        import boto3  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from botocore.config import Config  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise OSError(
            errno.ENOPKG if hasattr(errno, "ENOPKG") else errno.ENOENT,
            "JANITOR_STORAGE=s3 needs boto3: pip install 'registry-janitor[s3]'"
            " (or apt-get install python3-boto3)",
        ) from exc
    for name in ("boto3", "botocore", "urllib3", "s3transfer"):
        # Their debug output names every request; the janitor's --verbose is about the store.
        logging.getLogger(name).setLevel(logging.WARNING)
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path" if settings.path_style else "virtual"},
        "max_pool_connections": max_connections,
        "retries": {"mode": "standard", "max_attempts": 5},
        "connect_timeout": 10,
        "read_timeout": 60,
    }
    try:
        # Checksums only where S3 requires them (DeleteObjects): S3-compatible stores differ
        # in which of the newer checksum headers they accept.
        config = Config(
            **options,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    except TypeError:  # botocore older than 1.36 has neither option, and sends none
        config = Config(**options)
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint or None,
        region_name=settings.region or None,
        aws_access_key_id=settings.access_key or None,
        aws_secret_access_key=settings.secret_key or None,
        verify=settings.verify_tls,
        config=config,
    )


class S3Storage:
    """The registry's s3 driver layout in a bucket (see the module docstring)."""

    renames = False
    listing_is_cheap = True

    def __init__(self, settings: S3Settings, max_connections: int = 10, s3: Any = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.s3 = s3 if s3 is not None else client(settings, max_connections)
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._client_error: type[Exception] = ClientError
        self._boto_error: type[Exception] = BotoCoreError

    def __repr__(self) -> str:
        return f"S3Storage({self.settings.describe()!r})"

    def _key(self, path: str) -> str:
        return f"{self.prefix}{path}" if path else self.prefix.rstrip("/")

    def _dir_prefix(self, path: str) -> str:
        return f"{self.prefix}{path}/" if path else self.prefix

    # -- errors --------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str) -> OSError:
        if isinstance(exc, self._client_error):
            response: dict[str, Any] = getattr(exc, "response", {}) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = str(response.get("Error", {}).get("Message", "") or code or status)
            if code in _GONE:
                return FileNotFoundError(errno.ENOENT, f"{what}: not found")
            return OSError(errno.EIO, f"{what}: {code or status} {message}".strip())
        return OSError(errno.EIO, f"{what}: {exc}")

    def _call(self, what: str, method: str, **params: Any) -> Any:
        try:
            return getattr(self.s3, method)(Bucket=self.bucket, **params)
        except (self._client_error, self._boto_error) as exc:
            raise self._error(exc, what) from None

    # -- reads ---------------------------------------------------------------------------
    def probe(self) -> None:
        """Raises OSError unless the bucket answers (HeadBucket)."""
        self._call(f"bucket {self.bucket}", "head_bucket")

    def _pages(self, what: str, **params: Any) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page: dict[str, Any] = self._call(what, "list_objects_v2", **params, **extra)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                # A truncated listing that does not say where to go on: the rest is unknown,
                # and a listing taken as complete here would let GC delete what it misses.
                raise OSError(errno.EIO, f"{what}: truncated listing without a continuation token")

    def list(self, path: str) -> list[Entry]:
        prefix = self._dir_prefix(path)
        out: list[Entry] = []
        for page in self._pages(f"list {path or '/'}", Prefix=prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes") or []:
                name = cp["Prefix"][len(prefix) :].rstrip("/")
                if name:
                    out.append(Entry(name, True))
            for obj in page.get("Contents") or []:
                name = obj["Key"][len(prefix) :]
                if name:  # not a "directory marker" some tools write for a prefix
                    out.append(Entry(name, False))
        if not out:
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such directory")
        return out

    def walk(self, path: str) -> Files:
        prefix = self._dir_prefix(path)
        out: Files = []
        for page in self._pages(f"list {path or '/'}", Prefix=prefix):
            for obj in page.get("Contents") or []:
                name = obj["Key"][len(prefix) :]
                if name and not name.endswith("/"):
                    out.append((name, Stat(int(obj.get("Size", 0)), _mtime(obj["LastModified"]))))
        return out

    def stat(self, path: str) -> Stat:
        try:
            return _stat(self._call(f"stat {path}", "head_object", Key=self._key(path)))
        except FileNotFoundError:
            below = self.walk(path)
            if not below:
                raise
            newest = max(st.mtime for _, st in below)
            return Stat(0, newest, is_dir=True, is_file=False)

    def read(self, path: str, limit: int) -> tuple[bytes, Stat]:
        key = self._key(path)
        try:
            resp = self._call(f"read {path}", "get_object", Key=key, Range=f"bytes=0-{limit - 1}")
        except OSError as exc:
            if "InvalidRange" not in str(exc):
                raise
            head = self._call(f"stat {path}", "head_object", Key=key)  # an empty object
            return b"", _stat(head)
        try:
            data: bytes = resp["Body"].read()
        except (self._client_error, self._boto_error, OSError) as exc:
            raise self._error(exc, f"read {path}") from None
        finally:
            resp["Body"].close()
        size = len(data)
        content_range = str(resp.get("ContentRange") or "")
        if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
            size = int(content_range.rsplit("/", 1)[1])
        return data[:limit], _stat(resp, size)

    def read_chunks(
        self, path: str, chunk_size: int, *, fresh: bool = False
    ) -> Generator[bytes | memoryview, None, None]:
        # One GET streamed in pieces: the body is never held whole (blobs of gigabytes).
        # Every GET reaches the server: nothing is cached here, so `fresh` changes nothing.
        del fresh
        resp = self._call(f"read {path}", "get_object", Key=self._key(path))
        body = resp["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        except (self._client_error, self._boto_error, OSError) as exc:
            raise self._error(exc, f"read {path}") from None
        finally:
            body.close()

    # -- changes -------------------------------------------------------------------------
    def write(self, path: str, data: bytes) -> None:
        # One PutObject replaces the object atomically: a reader sees the old or the new one.
        self._call(f"write {path}", "put_object", Key=self._key(path), Body=data)

    def _copy(self, src: str, dst: str) -> None:
        """Server-side copy carrying the source's mtime (see "Hold without rename")."""
        head = self._call(f"copy {src}", "head_object", Key=self._key(src))
        st = _stat(head)
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        params = {
            "MetadataDirective": "REPLACE",
            "Metadata": {**(head.get("Metadata") or {}), MTIME_META: str(int(st.mtime))},
            "ContentType": head.get("ContentType") or "application/octet-stream",
        }
        if st.size <= COPY_MAX:
            self._call(
                f"copy {src}", "copy_object", CopySource=source, Key=self._key(dst), **params
            )
            return
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-not-found,import-untyped,unused-ignore]

        try:
            self.s3.copy(
                source,
                self.bucket,
                self._key(dst),
                ExtraArgs={k: v for k, v in params.items() if k != "MetadataDirective"},
                Config=TransferConfig(
                    multipart_threshold=COPY_MAX, multipart_chunksize=COPY_PART, use_threads=False
                ),
            )
        except (self._client_error, self._boto_error) as exc:
            raise self._error(exc, f"copy {src}") from None

    def move(self, src: str, dst: str) -> None:
        """Copy, then delete the source: never atomic (see "No rename" above). A file is
        tried first; a "directory" is every object below it, all copied before any is
        deleted. FileNotFoundError when nothing is at `src`. An existing `dst` is
        overwritten (the callers move only content-addressed or uniquely named entries)."""
        try:
            self._copy(src, dst)
            sources = [src]
        except FileNotFoundError:
            below = self.walk(src)
            if not below:
                raise
            for name, _ in below:
                self._copy(f"{src}/{name}", f"{dst}/{name}")
            sources = [f"{src}/{name}" for name, _ in below]
        failed = self.delete_many(sources)
        if failed:
            raise next(iter(failed.values()))

    def delete(self, path: str) -> None:
        keys = [path] + [f"{path}/{name}" for name, _ in self.walk(path)]
        failed = self.delete_many(keys)
        if failed:
            raise next(iter(failed.values()))

    def delete_many(self, paths: Sequence[str]) -> dict[str, OSError]:
        failed: dict[str, OSError] = {}
        todo = list(dict.fromkeys(paths))
        if len(todo) == 1:  # DeleteObject: one request either way, and no checksum header
            try:
                self._call(f"delete {todo[0]}", "delete_object", Key=self._key(todo[0]))
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed[todo[0]] = exc
            return failed
        by_key = {self._key(p): p for p in todo}
        for i in range(0, len(todo), DELETE_BATCH):
            batch = todo[i : i + DELETE_BATCH]
            objects = [{"Key": self._key(p)} for p in batch]
            try:
                resp = self._call(
                    f"delete {len(batch)} objects",
                    "delete_objects",
                    Delete={"Objects": objects, "Quiet": True},
                )
            except OSError as exc:
                failed.update((p, exc) for p in batch)
                continue
            for err in resp.get("Errors") or []:
                path = by_key.get(str(err.get("Key")), str(err.get("Key")))
                if str(err.get("Code")) in _GONE:
                    continue
                failed[path] = OSError(
                    errno.EIO, f"delete {path}: {err.get('Code')} {err.get('Message', '')}"
                )
        return failed

    def rmdir(self, path: str) -> None:
        resp = self._call(
            f"list {path}", "list_objects_v2", Prefix=self._dir_prefix(path), MaxKeys=1
        )
        if resp.get("Contents") or resp.get("KeyCount"):
            raise OSError(errno.ENOTEMPTY, f"{path}: not empty")

    def close(self) -> None:
        close = getattr(self.s3, "close", None)
        if close is not None:
            close()
