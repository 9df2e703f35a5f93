"""A SIGKILL inside the removal of an empty repository (found by the SIGKILL trials).

`executor.remove_repository` removes `_manifests`, then `_layers`, then the directories. A
kill between the two leaves `<repo>/_layers` without `_manifests`. The janitor only counts a
directory holding `_manifests` as a repository, so no later sweep finishes the removal, while
registry 2.8's catalog lists every directory holding `_layers`: the repository the janitor set
out to remove stays in `/v2/_catalog` for good (its tags list is empty; nothing kept is harmed).

Found by test_sigkill_sweep trial 41 (seed 20261127041, SIGKILL to the process group right
after `manifest_unlinked` #7; the kill landed in the repository phase): the next sweep exited
0 but left `scratch/tmp/_layers/sha256/*/link` behind. Here the kill point is placed exactly,
in-process, by making the janitor's own rmtree die right after `_manifests` is gone.
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
    real = executor._rmtree_quiet

    def dying(path: Path) -> None:
        real(path)
        if path.name == "_manifests" and not (path.parent / "_manifests").exists():
            raise Killed(path)

    monkeypatch.setattr(executor, "_rmtree_quiet", dying)
    argv = ["prune", "--data-dir", str(reg.root), *template.sweep_args]
    with pytest.raises(Killed):
        cli.main(argv)
    monkeypatch.undo()


@pytest.mark.xfail(
    strict=True,
    reason="janitor bug: a kill between rmtree(_manifests) and rmtree(_layers) in"
    " executor.remove_repository leaves <repo>/_layers, which no later sweep sees (store.discover"
    " needs _manifests) and registry 2.8 keeps listing in /v2/_catalog",
)
def test_next_sweep_finishes_an_interrupted_repository_removal(
    template: crashstore.Template,
    reference: crashstore.Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = template.copy_to(tmp_path / "registry")
    crash_inside_repository_removal(reg, template, monkeypatch)
    scratch = reg.repositories / "scratch" / "tmp"
    assert (scratch / "_layers").is_dir() and not (scratch / "_manifests").exists()
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
