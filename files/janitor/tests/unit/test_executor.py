"""executor.remove_tree: deletes a whole tree and never follows a symlink out of it."""

from __future__ import annotations

import os
from pathlib import Path

from registry_janitor import executor


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
    executor.remove_tree(str(top))
    assert not top.exists() and (tmp_path / "trash").is_dir()
    assert (victim / "sub" / "link").read_text() == "precious"


def test_a_symlink_at_the_top_is_unlinked_not_followed(tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    top = tmp_path / "entry"
    os.symlink(victim, top)
    executor.remove_tree(str(top))
    assert not top.is_symlink() and (victim / "sub" / "link").read_text() == "precious"


def test_relative_to_a_directory_descriptor_and_gone_is_fine(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        executor.remove_tree("d", fd)
        executor.remove_tree("d", fd)  # already gone: no error
    finally:
        os.close(fd)
    assert not (tmp_path / "d").exists()


def test_a_plain_file_is_unlinked(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    executor.remove_tree(str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()
