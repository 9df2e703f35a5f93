"""storage.remove_tree and FilesystemStorage: deletes a whole tree and never follows a symlink out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from registry_janitor import storage


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "outside"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "link").write_text("precious")
    return victim


def test_removes_a_nested_tree_with_files_and_links_inside(tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    top = tmp_path / "trash" / "entry"
    (top / "current").mkdir(parents=True)
    (top / "current" / "link").write_text("sha256:x")
    (top / "index" / "sha256" / "ab").mkdir(parents=True)
    (top / "index" / "sha256" / "ab" / "link").write_text("sha256:y")
    os.symlink(victim, top / "index" / "to-dir")
    os.symlink(victim / "sub" / "link", top / "to-file")
    storage.remove_tree(str(top))
    assert not top.exists() and (tmp_path / "trash").is_dir()
    assert (victim / "sub" / "link").read_text() == "precious"


def test_a_symlink_at_the_top_is_unlinked_not_followed(tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    top = tmp_path / "entry"
    os.symlink(victim, top)
    storage.remove_tree(str(top))
    assert not top.is_symlink() and (victim / "sub" / "link").read_text() == "precious"


def test_relative_to_a_directory_descriptor_and_gone_is_fine(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        storage.remove_tree("d", fd)
        storage.remove_tree("d", fd)  # already gone: no error
    finally:
        os.close(fd)
    assert not (tmp_path / "d").exists()


def test_a_plain_file_is_unlinked(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    storage.remove_tree(str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()


def test_filesystem_storage_never_follows_a_symlink_below_the_root(tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    root = tmp_path / "data"
    (root / "docker").mkdir(parents=True)
    os.symlink(victim, root / "docker" / "planted")
    fs = storage.FilesystemStorage(root)
    try:
        assert fs.list("docker") == [storage.Entry("planted", False, is_link=True)]
        data, st2 = fs.read("docker/planted", 100)
        assert data == b"" and not st2.is_file
        fs.delete("docker/planted")
        assert not (root / "docker" / "planted").exists()
    finally:
        fs.close()
    assert (victim / "sub" / "link").read_text() == "precious"


def test_filesystem_storage_move_creates_the_parent_and_reports_a_missing_source(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    (root / "a" / "x").mkdir(parents=True)
    fs = storage.FilesystemStorage(root)
    fs.move("a/x", "b/c/x")
    assert (root / "b" / "c" / "x").is_dir()
    try:
        fs.move("a/x", "b/c/y")
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("moving a missing source must raise FileNotFoundError")
    fs.close()


def _move_all_at_once(fs: storage.FilesystemStorage, moves: list[tuple[str, str]]) -> list[str]:
    """16 threads start together, each moving its share; returns the errors."""
    import threading

    barrier = threading.Barrier(16)
    errors: list[str] = []

    def mover(share: list[tuple[str, str]]) -> None:
        barrier.wait()
        for src, dst in share:
            try:
                fs.move(src, dst)
            except OSError as exc:
                errors.append(f"{src} -> {dst}: {exc}")

    threads = [threading.Thread(target=mover, args=(moves[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_moves_into_a_missing_parent_all_succeed(tmp_path: Path) -> None:
    """The first tag deletions of a run race to create the trash directory; none of them may
    mistake that race for "already gone" (found by the SIGKILL trials: a tag reported deleted
    stayed, and its manifest was unlinked)."""
    root = tmp_path / "data"
    for i in range(64):
        (root / "src" / str(i)).mkdir(parents=True)
    source = "src"
    for trial in range(5):
        fs = storage.FilesystemStorage(root)
        moves = [(f"{source}/{j}", f"dst{trial}/t/{j}") for j in range(64)]
        try:
            assert _move_all_at_once(fs, moves) == []
        finally:
            fs.close()
        assert len(list((root / f"dst{trial}" / "t").iterdir())) == 64
        source = f"dst{trial}/t"


class _TruncatedListing:
    """An S3 endpoint whose listing says "truncated" but gives no continuation token (seen
    from some S3-compatible servers and proxies; the RADOS Gateway does not do it, so the
    client is stood in for here; the fault proxy covers the wire)."""

    def list_objects_v2(self, **params: object) -> dict[str, object]:
        key = f"{params['Prefix']}a/data"
        return {"Contents": [{"Key": key, "Size": 1, "LastModified": None}], "IsTruncated": True}


def test_s3_listing_truncated_without_a_token_is_an_error_not_the_whole_listing() -> None:
    pytest.importorskip("boto3")
    from registry_janitor.s3 import S3Settings, S3Storage

    s3 = S3Storage(S3Settings(bucket="b"), s3=_TruncatedListing())
    for read in (lambda: s3.walk("docker"), lambda: s3.list("docker")):
        with pytest.raises(OSError, match="truncated listing without a continuation token"):
            read()
