"""A SIGKILL inside the removal of an empty repository (found by the SIGKILL trials).

`executor.remove_repository` used to remove `_manifests`, then `_layers`. A kill between the
two left `<repo>/_layers` without `_manifests`: the janitor only counts a directory holding
`_manifests` as a repository, so no later sweep finished the removal, while registry 2.8's
catalog lists every directory holding `_layers`, so the repository stayed in `/v2/_catalog` for
good. It now removes `_layers` first; this test kills it between the two and checks that the
next sweep finishes the job.

Found by test_sigkill_sweep trial 41 (seed 20261127041, SIGKILL to the process group right
after `manifest_unlinked` #7; the kill landed in the repository phase): the next sweep exited
0 but left `scratch/tmp/_layers/sha256/*/link` behind. Here the kill point is placed exactly,
in-process, by making the janitor die right after it moved `_layers` into its trash.
"""

from __future__ import annotations

from pathlib import Path

import crashstore
import janitor
import pytest
from registry import Registry
from registry_janitor import cli, executor


class Killed(BaseException):
    """Not an OSError, so nothing in the janitor handles it: the process 'dies' there."""


def crash_inside_repository_removal(
    reg: Registry, template: crashstore.Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = executor._to_trash

    def dying(path: Path, trash: Path | None) -> bool:
        moved = real(path, trash)
        if path.name == "_layers":
            raise Killed(path)  # `_layers` is gone, `_manifests` not yet
        return moved

    monkeypatch.setattr(executor, "_to_trash", dying)
    argv = ["prune", "--data-dir", str(reg.root), *template.sweep_args]
    with pytest.raises(Killed):
        cli.main(argv)
    monkeypatch.undo()


def test_next_sweep_finishes_an_interrupted_repository_removal(
    template: crashstore.Template,
    reference: crashstore.Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = template.copy_to(tmp_path / "registry")
    crash_inside_repository_removal(reg, template, monkeypatch)
    scratch = reg.repositories / "scratch" / "tmp"
    assert (scratch / "_manifests").is_dir() and not (scratch / "_layers").exists()
    again = janitor.run(reg, *template.sweep_args)
    assert again.returncode == 0, again.stderr
    for ref, digest in template.kept.items():  # what matters most holds either way
        repo, tag = ref.rsplit(":", 1)
        assert crashstore.tag_problems(reg.root, repo, tag, digest) == []
    reg.start()
    try:
        catalog = reg.catalog()
    finally:
        reg.stop()
    assert "scratch/tmp" not in catalog, f"catalog after the next sweep: {catalog}"
    crashstore.check_final(reg.root, template, reference)
