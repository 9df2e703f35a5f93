"""Helpers the Molecule scenarios' testinfra tests share.

Each scenario's tests/conftest.py puts this folder on sys.path: Molecule runs pytest from the
scenario directory, so only that scenario's tests folder is importable by default.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Moves the mtime of every `link` file below the given folders (repositories of a store)
# back by argv[1] seconds, atime and order kept, and the `data` of every blob they name once.
# The janitor reads a link's mtime as the push time of the tag, revision or layer it names,
# and a blob's `data` mtime as its age for garbage collection's grace period.
AGE_LINKS = """
import os, sys
shift = int(sys.argv[1]) * 10**9
def age(path):
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - shift), follow_symlinks=False)
blobs = set()
for top in sys.argv[2:]:
    v2 = top.rpartition("/repositories/")[0]
    for folder, _, files in os.walk(top):
        if "link" in files:
            path = os.path.join(folder, "link")
            age(path)
            hexpart = open(path).read().strip().removeprefix("sha256:")
            blobs.add(os.path.join(v2, "blobs", "sha256", hexpart[:2], hexpart, "data"))
for path in blobs:
    if os.path.exists(path):
        age(path)
"""


def sh(host, script: str) -> str:
    """Runs a shell script on the host; fails the test (script, rc and output) unless rc 0."""
    result = host.run(script)
    assert result.rc == 0, f"{script}\n--- rc {result.rc}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def push_scratch_image(host, ref: str) -> None:
    """Builds a one-file image FROM scratch with content of its own (so a new digest each
    time) with the host's Docker and pushes it to `ref` (e.g. 127.0.0.1:5000/repo:tag)."""
    sh(
        host,
        f"""
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "{ref} $(date +%s%N)" > "$dir/f.txt"
printf 'FROM scratch\\nCOPY f.txt /f.txt\\n' > "$dir/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t {ref} "$dir" >/dev/null
docker push -q {ref} >/dev/null
""",
    )


def age_links(host, seconds: int, *folders: str) -> None:
    """Every push below these folders (repositories of the store) `seconds` further back."""
    paths = " ".join(shlex.quote(folder) for folder in folders)
    sh(host, f"python3 -c {shlex.quote(AGE_LINKS)} {seconds} {paths}")


def blob_data(v2: str, digest: str) -> str:
    """A blob's content file in the store whose docker/registry/v2 folder is `v2`; gone once
    garbage-collect has deleted the blob."""
    hexpart = digest.removeprefix("sha256:")
    return f"{v2}/blobs/sha256/{hexpart[:2]}/{hexpart}/data"


def journal_cursor(host) -> str:
    """The journal's current end: unit_journal(after_cursor=...) then reads what follows."""
    out = sh(host, "journalctl -n 0 --show-cursor -q --no-pager")
    return out.strip().removeprefix("-- cursor: ")


def unit_journal(
    host, unit: str, *, after_cursor: str | None = None, since: str | None = None
) -> str:
    """A unit's journal messages (-o cat), after a journal_cursor() or since a Unix time.
    journalctl exits 0 when nothing matches, so a failure here is the journal's own. On a
    busy machine journald may not have written what systemd just logged: --sync first."""
    command = f"journalctl --sync && journalctl -u {unit} -o cat --no-pager"
    if after_cursor is not None:
        command += f" --after-cursor={shlex.quote(after_cursor)}"
    if since is not None:
        command += f" --since @{since}"
    return sh(host, command)


def sweep_by_service(host) -> str:
    """`systemctl start registry-janitor.service` (a oneshot: returns when the sweep has
    ended) as the timer does; asserts it succeeded and returns this run's journal lines."""
    cursor = journal_cursor(host)
    result = host.run("systemctl start registry-janitor.service")
    log = unit_journal(host, "registry-janitor.service", after_cursor=cursor)
    assert result.rc == 0, f"{result.stderr}\n{log}"
    assert host.check_output("systemctl show registry-janitor.service -p Result --value") == (
        "success"
    )
    return log


def controller_tool(name: str) -> str:
    """An Ansible command on the controller: on PATH, else next to this Python (the venv)."""
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    assert Path(found).exists(), f"{name} not found on the controller"
    return found


@contextmanager
def one_file_at_a_time(host_name: str) -> Iterator[None]:
    """Test files that restart, sweep or reconfigure the same host take turns: pytest-xdist
    runs the files of a scenario at the same time. A lock file on the controller, in the
    scenario's folder (destroy removes it); held until the block ends."""
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "default")
    folder = Path("/var/tmp/registry-cache-molecule") / scenario
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{host_name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
