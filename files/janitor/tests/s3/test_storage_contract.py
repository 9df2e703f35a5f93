"""The storage interface means the same on a filesystem and in a bucket (RADOS Gateway).

Every check runs on both backends: what the janitor's modules rely on (listing, stat, read
with a limit, atomic write, move, delete, rmdir refusing a non-empty directory, walk,
batched deletes) must not depend on where the store is.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_janitor.s3 import S3Settings, S3Storage
from registry_janitor.storage import Entry, FilesystemStorage, Storage
from rgw import ACCESS_KEY, SECRET_KEY, Bucket, RadosGateway


@pytest.fixture(params=["filesystem", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "filesystem":
        fs = FilesystemStorage(tmp_path / "root")
        (tmp_path / "root").mkdir()
        yield fs
        fs.close()
        return
    gw: RadosGateway = request.getfixturevalue("rgw")
    s3 = s3_storage(gw, gw.bucket("contract"))
    yield s3
    s3.close()


def s3_storage(gw: RadosGateway, bucket: Bucket) -> S3Storage:
    """The janitor's storage on a bucket of the gateway."""
    return S3Storage(
        S3Settings(
            bucket=bucket.name,
            endpoint=gw.endpoint,
            root_directory=bucket.root,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
        )
    )


def write(storage: Storage, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        if isinstance(storage, FilesystemStorage):
            (storage.root / path).parent.mkdir(parents=True, exist_ok=True)
        storage.write(path, data)


def test_list_names_files_and_directories(storage: Storage) -> None:
    write(storage, {"a/b/c": b"1", "a/d": b"2", "a/e/f/g": b"3"})
    assert sorted(storage.list("a"), key=lambda e: e.name) == [
        Entry("b", True),
        Entry("d", False),
        Entry("e", True),
    ]
    with pytest.raises(FileNotFoundError):
        storage.list("nothing")


def test_stat_and_read(storage: Storage) -> None:
    write(storage, {"x/link": b"sha256:" + b"a" * 64, "x/empty": b""})
    data, st = storage.read("x/link", 256)
    assert data == b"sha256:" + b"a" * 64 and st.size == 71 and st.is_file
    assert abs(st.mtime - time.time()) < 30
    assert storage.stat("x/link").mtime == st.mtime  # the same clock, the same precision
    assert storage.read("x/link", 10)[0] == b"sha256:aaa"
    assert storage.read("x/empty", 10)[0] == b""
    assert storage.stat("x").is_dir
    with pytest.raises(FileNotFoundError):
        storage.read("x/none", 10)
    with pytest.raises(FileNotFoundError):
        storage.stat("x/none")


def test_write_replaces(storage: Storage) -> None:
    write(storage, {"state": b"old"})
    storage.write("state", b"new")
    assert storage.read("state", 100)[0] == b"new"


def test_move_a_directory_and_a_file(storage: Storage) -> None:
    write(storage, {"src/d/data": b"blob", "src/d/sub/link": b"l", "f": b"file"})
    storage.move("src/d", "held/d")
    assert {n for n, _ in storage.walk("held/d")} == {"data", "sub/link"}
    assert storage.walk("src/d") == []
    storage.move("f", "g/f")
    assert storage.read("g/f", 10)[0] == b"file"
    with pytest.raises(FileNotFoundError):
        storage.move("f", "g/h")
    with pytest.raises(FileNotFoundError):
        storage.move("src/d", "elsewhere")


def test_a_moved_file_keeps_its_mtime_and_its_version_matches_its_listing(
    storage: Storage,
) -> None:
    """What garbage collection relies on (gc.py): a file moved away and back (the hold) keeps
    the mtime it had, so its age does not restart; and the version a stat gives equals the
    one a listing gives, so a blob once put back is not "changed since the mark" forever and
    can be collected again (before, on S3: the listed LastModified was compared with the
    carried mtime, which differ after every put-back)."""
    write(storage, {"b/x/data": b"blob"})
    written = storage.stat("b/x/data").mtime
    time.sleep(1.1)  # a copy made later gets a later LastModified
    storage.move("b/x", "held/x")
    storage.move("held/x", "b/x")
    st = storage.stat("b/x/data")
    [(name, listed)] = storage.walk("b/x")
    assert name == "data" and st.mtime == written
    assert st.version == listed.version


def test_delete_tree_file_and_gone(storage: Storage) -> None:
    write(storage, {"t/a/b": b"1", "t/c": b"2", "keep/x": b"3"})
    storage.delete("t/c")
    storage.delete("t")
    storage.delete("t")  # gone: nothing
    assert storage.walk("t") == []
    assert storage.read("keep/x", 10)[0] == b"3"


def test_rmdir_refuses_a_directory_with_something_below(storage: Storage) -> None:
    write(storage, {"r/_manifests/tags/x/current/link": b"l"})
    with pytest.raises(OSError) as err:
        storage.rmdir("r/_manifests/tags")
    assert err.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    storage.delete("r/_manifests/tags/x")
    try:
        storage.rmdir("r/_manifests/tags")  # empty: removed (a bucket has nothing to remove)
    except FileNotFoundError:
        pass


def test_walk_lists_every_file_below_with_sizes(storage: Storage) -> None:
    write(storage, {"w/a": b"12", "w/b/c": b"345", "w/b/d/e": b"", "wx": b"not below w"})
    found = {name: st.size for name, st in storage.walk("w")}
    assert found == {"a": 2, "b/c": 3, "b/d/e": 0}
    assert storage.walk("nothing") == []


def test_delete_many_in_batches_and_gone_counts_as_deleted(storage: Storage) -> None:
    files = {f"many/{i:04d}": b"x" for i in range(1100)}  # more than one DeleteObjects batch
    write(storage, files)
    failed = storage.delete_many([*files, "many/never-there"])
    assert failed == {}
    assert storage.walk("many") == []


def test_the_gateway_can_date_objects_in_the_past(rgw: RadosGateway) -> None:
    """The tests' stand-in for utime on a bucket (rgw.py): LastModified as asked, to the
    second, seen the same way by the janitor's storage."""
    bucket = rgw.bucket("dating")
    s3 = s3_storage(rgw, bucket)
    s3.write("a", b"1")
    s3.write("b", b"2")
    when = time.time() - 30 * 86400
    rgw.age(bucket.name, {f"{bucket.prefix}a": when, f"{bucket.prefix}b": when + 3600})
    assert s3.stat("a").mtime == int(when)
    assert {n: st.mtime for n, st in s3.walk("")} == {"a": int(when), "b": int(when) + 3600}
    assert s3.read("b", 10) == (b"2", s3.stat("b"))
