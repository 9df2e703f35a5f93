"""Bad settings and unusual stores, against copies of the store built by real pushes:

- bad settings and malformed policy files: exit 2, one line naming the setting or the
  policy key, and the store is byte-for-byte, mtime-for-mtime untouched (no lock file either);
- a data directory without a registry store (the Storage Box not mounted): exit 1, nothing
  written;
- unusual but valid names pushed for real: a 128-character tag, dots, dashes, underscores,
  `__` and `--` in repository components, nine levels of nesting;
- symlink loops and symlinks out of the store: the sweep ends, deletes nothing outside.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import crashstore
import janitor
import oci
import pytest
from registry import Registry, pull, push, running
from stores import FsStore, S3Store, Store, store_factory

POLICY_ERRORS = {
    "malformed": ("rules = [", "not valid TOML"),
    "unknown-key": ('[[rules]]\nmatch = "ci/*"\nkeep_last = 3', "keep_last"),
    "negative": ('[[rules]]\nmatch = "ci/*"\nkeep_last_n = -3', "keep_last_n"),
    "wrong-type": ('[[rules]]\nmatch = "ci/*"\nkeep_last_n = "5"', "keep_last_n"),
    "no-match": ("[[rules]]\nkeep_last_n = 1", "match"),
    "max-below-min": ('[[rules]]\nmatch = "ci/*"\nmax_age = "1h"\nkeep_min_age = "2h"', "max_age"),
    "bad-regex": ('[[rules]]\nmatch = "ci/*"\nprotect_tags = "("', "protect_tags"),
    "bad-duration": ('[[rules]]\nmatch = "ci/*"\nmax_age = "soon"', "max_age"),
}
SETTING_ERRORS = {
    "KEEP_LAST_N": ["-1", "ten", "1.5"],
    "JANITOR_INTERVAL_SECS": ["0", "-5"],
    "KEEP_MIN_AGE": ["5x", "-1h"],
    "GC_DELETE_UNTAGGED": ["maybe"],
    "RUN_GC": ["2"],
    "PROTECT_TAGS": ["release-("],
    "JANITOR_CONCURRENCY": ["0", "11"],
    "JANITOR_POLICY_FILE": ["/nonexistent/policy.toml"],
    "JANITOR_LOCK_FILE": ["/nonexistent/janitor.lock"],
}


def refused(result: janitor.subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2 and one line that names the setting (by any of `names`)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("registry-janitor: "), result.stderr
    assert any(n in lines[0] for n in names), lines[0]


def tree_hash(store: Store) -> str:
    """The store and, on a filesystem, everything else in the data directory (a lock file)."""
    if isinstance(store, FsStore):
        return FsStore(store.root).fingerprint() + str(sorted(os.listdir(store.root)))
    return store.fingerprint()


@pytest.fixture(scope="module")
def pristine(
    template: crashstore.Template, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Registry, str]]:
    """One copy of the store for every refused run; each test checks it is still unchanged."""
    reg = template.copy_to(tmp_path_factory.mktemp(f"pristine-{template.backend}"))
    yield reg, tree_hash(reg.store)


BOOLEANS = {"GC_DELETE_UNTAGGED", "RUN_GC"}  # as flags they take no value: --[no-]run-gc


# Settings are checked before any storage is opened: the same on both backends.
@pytest.mark.backends("filesystem")
@pytest.mark.parametrize(
    ("setting", "value", "as_flag"),
    [
        (k, v, as_flag)
        for k, vs in SETTING_ERRORS.items()
        for v in vs
        for as_flag in (False, True)
        if not (as_flag and k in BOOLEANS)
    ],
)
def test_bad_setting_touches_nothing(
    template: crashstore.Template,
    pristine: tuple[Registry, str],
    setting: str,
    value: str,
    as_flag: bool,
) -> None:
    reg, before = pristine
    flag = "--" + setting.lower().removeprefix("janitor_").replace("_", "-")
    if as_flag:
        result = janitor.run(reg, *template.sweep_args, f"{flag}={value}")
    else:
        result = janitor.run(reg, env={setting: value})  # no flag: a flag would win
    # By flag, the message names the flag (or, for the policy file, the variable and the path).
    refused(result, *((flag, setting) if as_flag else (setting,)))
    assert tree_hash(reg.store) == before


@pytest.mark.backends("filesystem")
@pytest.mark.parametrize("case", sorted(POLICY_ERRORS))
def test_bad_policy_file_touches_nothing(
    pristine: tuple[Registry, str], tmp_path: Path, case: str
) -> None:
    text, key = POLICY_ERRORS[case]
    reg, before = pristine
    policy = tmp_path / "policy.toml"
    policy.write_text(text + "\n")
    result = janitor.run(reg, *crashstore.SWEEP_ARGS_BASE, "--policy-file", str(policy))
    refused(result, key)
    assert str(policy) in result.stderr
    assert tree_hash(reg.store) == before


@pytest.mark.backends("filesystem")
@pytest.mark.parametrize("command", ["sweep", "prune", "gc", "check"])
def test_unmounted_data_directory_writes_nothing(
    template: crashstore.Template, tmp_path: Path, command: str
) -> None:
    reg = template.copy_to(tmp_path)
    shutil.rmtree(reg.root)
    reg.root.mkdir()  # an empty mount point: the Storage Box is not mounted
    result = janitor.run(reg, *template.sweep_args, command=command)
    assert result.returncode == 1, result.stderr
    assert "docker/registry/v2" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(reg.root) == []


@pytest.mark.backends("s3")
@pytest.mark.parametrize("command", ["sweep", "prune", "gc", "report", "check"])
def test_missing_bucket_writes_nothing(
    template: crashstore.Template, tmp_path: Path, command: str
) -> None:
    """The bucket's counterpart of an unmounted Storage Box: it does not answer (here: it
    does not exist). Exit 1 naming the bucket, and nothing written anywhere."""
    reg = template.copy_to(tmp_path)
    assert isinstance(reg.store, S3Store)
    gone = f"{reg.store.bucket.name}-gone"
    args = [a if a != reg.store.bucket.name else gone for a in reg.janitor_args()]
    result = janitor.subprocess.run(
        [janitor.sys.executable, "-m", "registry_janitor", command, "--run-once", *args,
         *template.sweep_args],
        capture_output=True, check=False, text=True, timeout=120, env=janitor.janitor_env(reg),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"the bucket does not answer (s3://{gone}/" in result.stderr
    assert "Traceback" not in result.stderr
    assert gone not in {b["Name"] for b in reg.store.s3.list_buckets()["Buckets"]}
    assert not reg.store.lock_file.with_name(f"registry-janitor-{gone}.lock").exists()


def test_check_passes_on_a_store(template: crashstore.Template, tmp_path: Path) -> None:
    """`check` (the registry unit's start-up check) exits 0 on a store that is there and
    changes nothing."""
    reg = template.copy_to(tmp_path)
    before = tree_hash(reg.store)
    result = janitor.run(reg, *template.sweep_args, command="check")
    assert result.returncode == 0, result.stderr
    assert "store ready" in result.stderr
    assert tree_hash(reg.store) == before


# -- unusual but valid names --------------------------------------------------------------

LONG_TAG = "v" + "1.2-3_" * 21 + "x"  # 128 characters: the most the reference grammar allows
NAMES = {
    "my.org/team_x/app-name.v2": ["1.2.3", "rc-1", "feature_x"],
    "a__b/x--y/z.z": ["_tmp", "UPPER.case", LONG_TAG],
    "d1/d2/d3/d4/d5/d6/d7/d8/deep": ["a", "b", "c"],
}


def test_unusual_valid_names(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    assert len(LONG_TAG) == 128 and re.fullmatch(r"[\w][\w.-]{0,127}", LONG_TAG)
    layout = oci.Layout(tmp_path / "layout")
    base = layout.layer({"base": b"base"})
    old = time.time() - 30 * 86400
    store = store_factory(backend, request)("names")
    with running(tmp_path / "registry", store=store) as reg:
        expect_kept = {}
        for r, (repo, tags) in enumerate(NAMES.items()):
            for i, tag in enumerate(tags):
                desc = layout.image([base, layout.layer({"f": f"{repo}:{tag}".encode()})])
                layout.tag(f"img{r}-{i}", desc)
                push(layout.path, f"img{r}-{i}", reg, f"{repo}:{tag}")
            expect_kept[repo] = tags[-1]
        crashstore.age(
            reg, {f"{repo}:{t}": old + i for repo, ts in NAMES.items() for i, t in enumerate(ts)}
        )
        result = janitor.run(reg, "--keep-last-n", "1")
        assert result.returncode == 0, result.stderr
        assert reg.catalog() == sorted(NAMES)
        for repo, tag in expect_kept.items():
            assert reg.tags(repo) == [tag]
            pulled = pull(reg, f"{repo}:{tag}", tmp_path / f"pull-{len(tag)}-{repo.count('/')}")
            assert pulled.returncode == 0, pulled.stderr
        again = janitor.run(reg, "--keep-last-n", "1")
        assert again.returncode == 0 and "0 deleted, 0 manifests unlinked" in again.stderr


# -- symlinks -----------------------------------------------------------------------------


def plant_escapes(repos: Path, outside: Path) -> None:
    """Symlinks from the store to a repository outside it, with tags the policy would delete."""
    shutil.copytree(repos / "ci" / "app", outside / "victim", symlinks=True)
    (repos / "escape").symlink_to(outside)  # escape/victim would be a repository
    tags = repos / "ci" / "app" / "_manifests" / "tags"
    (tags / "evil").symlink_to(outside / "victim" / "_manifests" / "tags" / "b0")
    revisions = repos / "ci" / "app" / "_manifests" / "revisions" / "sha256"
    (revisions / ("0" * 64)).symlink_to(outside / "victim" / "_manifests" / "revisions")


def sweep_with_symlinks(
    template: crashstore.Template, tmp_path: Path, *, loops: bool, extra: tuple[str, ...] = ()
) -> tuple[janitor.subprocess.CompletedProcess[str], Path]:
    reg = template.copy_to(tmp_path / "registry")
    outside = tmp_path / "outside"
    plant_escapes(reg.repositories, outside)
    if loops:
        (reg.repositories / "ci" / "loop").symlink_to("..")  # ci/loop/ci/loop/...
        (reg.repositories / "team" / "svc" / "self").symlink_to(".")
    outside_before = FsStore(outside).fingerprint()
    before = crashstore.visible_tags(reg.store)
    blobs_before = {p for p in reg.store.files("docker/registry/v2/blobs")}
    start = time.monotonic()
    result = janitor.run(reg, *template.sweep_args, *extra)
    took = time.monotonic() - start
    print(f"exit {result.returncode} in {took:.2f} s\n{result.stderr[-3000:]}")
    assert took < 30, f"sweep took {took:.1f} s"
    assert FsStore(outside).fingerprint() == outside_before, "something outside the store changed"
    # The registry follows links, the janitor does not: each link is a gap it names. ci/app,
    # which has links of its own (`evil`, a revision), is left untouched by the prune; the
    # other repositories are pruned to the kept set; garbage collection deletes no blob.
    visible = crashstore.visible_tags(reg.store)
    expected = {**template.kept_tags(), "ci/app": before["ci/app"]}
    assert visible == expected
    for ref, digest in template.kept.items():
        repo, tag = ref.rsplit(":", 1)
        assert crashstore.tag_problems(reg.store, repo, tag, digest) == []
    assert crashstore.trash_entries(reg.store) == []
    assert set(reg.store.files("docker/registry/v2/blobs")) == blobs_before
    return result, reg.root


# Symlinks exist on a filesystem only.
@pytest.mark.backends("filesystem")
def test_symlinks_out_of_the_store_are_not_followed(
    template: crashstore.Template, tmp_path: Path
) -> None:
    result, _ = sweep_with_symlinks(template, tmp_path, loops=False)
    assert result.returncode == 1, result.stderr
    for link in ("repositories/escape", "ci/app/_manifests/tags/evil", "revisions/sha256/000"):
        assert f"{link}" in result.stderr and "a symbolic link" in result.stderr
    assert "no blob deleted" in result.stderr


@pytest.mark.backends("filesystem")
def test_symlink_loop_ends_at_once_and_both_engines_fail_loudly(
    template: crashstore.Template, tmp_path: Path
) -> None:
    """The janitor does not follow the loop: it names it and deletes no blob (exit 1). The
    registry's own garbage-collect follows it and fails ("failed to parse repo name
    ci/loop/ci/loop/..."), so with GC_ENGINE=registry the sweep exits 1 too, says so, and GC
    stays owed until someone removes the loop: loud, not silent, and nothing lost."""
    result, root = sweep_with_symlinks(template, tmp_path / "janitor", loops=True)
    assert result.returncode == 1, result.stderr
    assert "repositories/ci/loop: a symbolic link" in result.stderr
    result, root = sweep_with_symlinks(
        template, tmp_path / "registry", loops=True, extra=("--gc-engine", "registry")
    )
    assert result.returncode == 1, result.stderr
    assert "gc failed: garbage-collect exited 1" in result.stderr
    assert "ci/loop/ci/loop" in result.stderr  # the path names the loop
    assert (root / ".registry-janitor.gc-pending").exists()
