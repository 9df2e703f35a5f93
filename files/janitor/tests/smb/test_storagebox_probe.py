"""The storagebox role's share probe (roles/storagebox/files/storagebox_probe.py), run as
the role runs it, against real Samba shares: it must warn on the case-insensitive
Storage-Box-like share, pass on the case-sensitive one, and fail with what to change on a
share the server refuses writes to. It lives in the role; these tests are here because the
Samba harness is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from smbshare import SmbDir

PROBE = (
    Path(__file__).resolve().parents[4] / "roles" / "storagebox" / "files" / "storagebox_probe.py"
)


def run_probe(
    share: SmbDir, out: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    results, metrics = out / "probe.json", out / "probe.prom"
    done = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            str(share.path),
            "--results",
            str(results),
            "--metrics",
            str(metrics),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    print(done.stdout, done.stderr)
    doc = json.loads(results.read_text()) if results.exists() else {}
    return done, doc


def statuses(doc: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


def metric(out: Path, name: str, labels: str = "") -> float:
    for line in (out / "probe.prom").read_text().splitlines():
        if line.startswith(f"storagebox_probe_{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} {labels}")


def test_storagebox_share_works_but_warns_it_is_case_insensitive(
    smb_share: SmbDir, tmp_path: Path
) -> None:
    done, doc = run_probe(smb_share, tmp_path)
    assert done.returncode == 0, done.stdout
    assert doc["status"] == "warn"
    assert doc["case_sensitive"] is False
    checks = statuses(doc)
    assert checks.pop("case") == "warn"
    # Whatever else the share did is recorded; what the registry needs must hold.
    for name in ("write", "upload", "rename_over", "rename_dir", "mtime", "flock", "free_space"):
        assert checks[name] == "ok", (name, doc)
    assert "Latest" in done.stdout and "lower-case tags" in done.stdout
    assert metric(tmp_path, "case_sensitive") == 0
    assert metric(tmp_path, "check_passed", 'check="case"') == 0
    assert metric(tmp_path, "failures") == 0
    assert metric(tmp_path, "free_bytes") == doc["free_bytes"] > 0
    assert statuses(doc)["cleanup"] == "ok"
    # Only the probe's own view: the server may keep a copy of the renamed directory.
    # rclone loses track of a directory renamed while a file in it awaits upload, and
    # uploads that file after it was deleted (docs/smb.md); the cifs client has no such queue.


def test_case_sensitive_share_passes(smb_share_case_sensitive: SmbDir, tmp_path: Path) -> None:
    done, doc = run_probe(smb_share_case_sensitive, tmp_path)
    assert done.returncode == 0, done.stdout
    assert doc["case_sensitive"] is True
    assert statuses(doc)["case"] == "ok"
    assert metric(tmp_path, "case_sensitive") == 1


def test_case_insensitive_share_fails_when_asked_to(smb_share: SmbDir, tmp_path: Path) -> None:
    done, doc = run_probe(smb_share, tmp_path, "--case-insensitive-fails")
    assert done.returncode == 1
    assert statuses(doc)["case"] == "fail"


def test_read_only_share_fails_with_what_to_change(
    smb_share_read_only: SmbDir, tmp_path: Path
) -> None:
    done, doc = run_probe(smb_share_read_only, tmp_path)
    assert done.returncode == 1
    assert doc["status"] == "fail"
    assert statuses(doc)["write"] == "fail"
    assert "cannot create a directory on the share" in done.stdout
    assert "read only = no" in done.stdout and "readonly" in done.stdout
    assert metric(tmp_path, "failures") >= 1


def test_require_mount_probes_nothing_on_a_plain_directory(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-mount"
    plain.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            str(plain),
            "--require-mount",
            "--json",
            "--results",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["status"] == "not mounted"
    assert list(plain.iterdir()) == [] and not (tmp_path / "r.json").exists()


def test_require_mount_probes_a_bind_mount(tmp_path: Path) -> None:
    """A bind mount within one filesystem is a mount point too (os.path.ismount says no)."""
    if os.geteuid() != 0:
        pytest.skip("bind-mounting needs root")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    try:
        done = subprocess.run(
            [sys.executable, str(PROBE), str(dst), "--require-mount", "--json", "--settle", "0.5"],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        subprocess.run(["umount", str(dst)], check=True)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "ok", doc
    assert doc["case_sensitive"] is True  # a local Linux filesystem


# The role's wiring: roles/storagebox/tasks/probe.yml run by ansible-playbook on this
# machine (connection local) against the real shares, with the probe installed into a
# temporary directory instead of /usr/local/libexec.
REPO = Path(__file__).resolve().parents[4]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_role_probe(shares: dict[str, SmbDir], out: Path) -> subprocess.CompletedProcess[str]:
    """One ansible-playbook run, one inventory host per share (all local)."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not in this Python's environment (make venv)")
    playbook = out / "probe.yml"
    playbook.write_text(
        "- hosts: all\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: storagebox\n"
        "        tasks_from: probe.yml\n"
    )
    inventory = {
        "all": {
            "hosts": {
                name: {
                    "ansible_python_interpreter": sys.executable,
                    "storagebox_probe_bin": str(out / name / "bin" / "storagebox-probe"),
                    # The probe wants a mount point: the mount's root.
                    "storagebox_mount_path": str(share.mount),
                    "storagebox_probe_results_file": str(out / name / "probe.json"),
                    "storagebox_probe_metrics_file": str(out / name / "probe.prom"),
                }
                for name, share in shares.items()
            }
        }
    }
    (out / "inventory.json").write_text(json.dumps(inventory))
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(out / "inventory.json"), str(playbook)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"},
    )
    print(done.stdout, done.stderr)
    return done


def recap(done: subprocess.CompletedProcess[str], host: str) -> dict[str, int]:
    m = re.search(rf"^{host}\s*:\s*(.*)$", done.stdout, re.MULTILINE)
    assert m, done.stdout
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[1])}


def test_role_warns_on_a_storagebox_share_and_stops_on_a_read_only_one(
    smb_share: SmbDir, smb_share_read_only: SmbDir, tmp_path: Path
) -> None:
    done = run_role_probe({"box": smb_share, "readonly": smb_share_read_only}, tmp_path)
    box, readonly = recap(done, "box"), recap(done, "readonly")
    # The Storage-Box-like share: deployed with a warning; installing the probe (its
    # directory, the script) changes the host, probing does not.
    assert box["failed"] == 0 and box["changed"] == 2
    assert "WARNING: the share at" in done.stdout
    assert "case-insensitive" in done.stdout
    assert json.loads((tmp_path / "box" / "probe.json").read_text())["case_sensitive"] is False
    assert metric(tmp_path / "box", "case_sensitive") == 0
    # The read-only share stops the play with the probe's message.
    assert readonly["failed"] == 1
    assert "failed the probe" in done.stdout
    assert "write: cannot create a directory on the share" in done.stdout
    assert "read only = no" in done.stdout
