"""SIGKILL at random points of a prune: no tag the policy keeps is harmed, no half-deleted
tag is visible, and the next run completes the job."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from synthetic import Store

OLD = time.time() - 86400
REPOS, TAGS, KEEP = 4, 60, 5
TRIALS = 6


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = Store(tmp_path_factory.mktemp("template") / "data")
    for r in range(REPOS):
        for i in range(TAGS):
            s.tag(f"team/r{r}", f"t{i:03}", s.image(f"{r}-{i}"), OLD + i)
        s.revision(f"team/r{r}", s.image(f"orphan-{r}"))
    return s


def kept(s: Store) -> dict[str, set[str]]:
    return {f"team/r{r}": {f"t{i:03}" for i in range(TAGS - KEEP, TAGS)} for r in range(REPOS)}


def prune(data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "registry_janitor",
        "prune",
        "--data-dir",
        str(data),
        "--keep-last-n",
        str(KEEP),
    ]


def check_consistent(data: Path, expect: dict[str, set[str]], *, complete: bool) -> None:
    repos = data / "docker" / "registry" / "v2" / "repositories"
    for repo, keep in expect.items():
        tags_dir = repos / repo / "_manifests" / "tags"
        present = {p.name for p in tags_dir.iterdir()}
        assert keep <= present, f"{repo}: a kept tag is gone"
        for tag in present:  # every tag the registry can see resolves
            link = tags_dir / tag / "current" / "link"
            assert link.is_file(), f"{repo}:{tag} is half deleted"
            digest = link.read_text()
            revision = repos / repo / "_manifests" / "revisions" / "sha256" / digest[7:] / "link"
            if tag in keep:
                assert revision.is_file(), f"{repo}:{tag} lost its manifest"
        if complete:
            assert present == keep


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_during_prune(template: Store, tmp_path: Path, trial: int) -> None:
    data = tmp_path / "data"
    shutil.copytree(template.root, data, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "KEEP_"))}
    delay = 0.0 if trial == 0 else random.Random(trial).uniform(0, 0.15)
    deleting = threading.Event()

    def drain(stream: IO[str]) -> None:  # keep reading so the janitor never blocks on stderr
        for line in stream:
            if line.startswith("deleted tag"):
                deleting.set()

    with subprocess.Popen(prune(data), stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        reader = threading.Thread(target=drain, args=(proc.stderr,), daemon=True)
        reader.start()
        assert deleting.wait(20)
        time.sleep(delay)  # somewhere in the middle of the deletions
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
    check_consistent(data, kept(template), complete=False)
    remaining = sum(
        len(list((data / "docker/registry/v2/repositories" / repo / "_manifests/tags").iterdir()))
        for repo in kept(template)
    )
    assert remaining > REPOS * KEEP or trial > 0  # killed at once, the first trial stops early
    again = subprocess.run(prune(data), capture_output=True, text=True, env=env, check=False)
    assert again.returncode == 0, again.stderr
    check_consistent(data, kept(template), complete=True)
    assert list((data / ".registry-janitor-trash").iterdir()) == []
