"""A SIGKILL inside the removal of an empty repository (found by the SIGKILL trials).

`executor.remove_repository` once removed `_manifests`, then `_layers`. A kill between the
two left `<repo>/_layers` without `_manifests`, which registry 2.8's catalog lists for good.
Now `_layers` goes first, into the janitor's hold (a push landing meanwhile gets its layer
links back), then `_manifests`. This test kills it between the two and checks that the next
sweep finishes the job: it settles the held `_layers` first, then removes the repository.

Found by a SIGKILL trial (seed 20261127041, SIGKILL to the process group right after
`manifest_unlinked` #7; the kill landed in the repository phase). Here the kill point is
placed exactly, in-process, by making the janitor die right after it held `_layers`.
"""

from __future__ import annotations

import os
from pathlib import Path

import crashstore
import janitor
import pytest
from registry import Registry
from registry_janitor import cli
from registry_janitor.hold import Hold
from stores import REPOSITORIES


class Killed(BaseException):
    """Not an OSError, so nothing in the janitor handles it: the process 'dies' there."""


def crash_inside_repository_removal(
    reg: Registry, template: crashstore.Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Hold.hold_layers

    def dying(self: Hold, repo: str) -> bool:
        real(self, repo)
        raise Killed(repo)  # `_layers` is held, `_manifests` not removed yet

    monkeypatch.setattr(Hold, "hold_layers", dying)
    for name, value in reg.store.janitor_env({}).items():  # a bucket's credentials
        monkeypatch.setenv(name, value)
    argv = ["prune", *reg.janitor_args(), *template.sweep_args]
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
    scratch = f"{REPOSITORIES}/scratch/tmp"
    assert not reg.store.is_dir(f"{scratch}/_layers")
    assert reg.store.listdir(".registry-janitor-held/layers") == {"scratch%tmp"}
    if reg.backend == "filesystem":  # its (empty) directories: a bucket has none
        assert os.path.isdir(reg.root / scratch / "_manifests")
    again = janitor.run(reg, *template.sweep_args)
    assert again.returncode == 0, again.stderr
    for ref, digest in template.kept.items():  # what matters most holds either way
        repo, tag = ref.rsplit(":", 1)
        assert crashstore.tag_problems(reg.store, repo, tag, digest) == []
    reg.start()
    try:
        catalog = reg.catalog()
    finally:
        reg.stop()
    assert "scratch/tmp" not in catalog, f"catalog after the next sweep: {catalog}"
    crashstore.check_final(reg.store, template, reference)
