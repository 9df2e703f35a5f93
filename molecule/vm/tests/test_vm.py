"""The production path in a VM: the kernel's CIFS client, systemd, SSH, real pushes.

The guest (QEMU, its own Debian kernel) mounts the scenario's Samba "Storage Box" from
/etc/fstab; the registry keeps its data there. Pushes and pulls come from this machine through
the forwarded port (skopeo); commands in the guest run over SSH as root (sudo). Samba's own
storage (the share's folder on this machine) shows what reached the server, behind every
client cache. The tests build on one registry and run in file order; the disruptive ones
(Storage Box away, reboot) come last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
from registry_cache_testing import age_links, blob_data, journal_cursor, sh, unit_journal

HOST = "registry-cache-vm"
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = RUNNER.get_hosts(HOST)
VARS = RUNNER.get_variables(HOST)

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
OCIGEN = PROJECT / "molecule" / "janitor" / "files" / "ocigen.py"
VM_DIR = Path(VARS["vm_dir"])
WORK = VM_DIR / "work"
# The registry, from this machine (QEMU forwards 127.0.0.1:PORT to the guest's port 5000).
REG = f"127.0.0.1:{VARS['vm_registry_port']}"
SKOPEO = ["skopeo", "--insecure-policy"]
MOUNT = "/mnt/storagebox"
MOUNT_UNIT = "mnt-storagebox.mount"
DATA = f"{MOUNT}/registry"
V2 = f"{DATA}/docker/registry/v2"
# The same store as Samba keeps it on this machine (registry_data_dir is the share's registry/).
SERVER_V2 = VM_DIR / "share" / "registry" / "docker" / "registry" / "v2"
SMBD_PIDFILE = VM_DIR / "samba" / "pid" / "smbd.pid"
SMBD_START = VM_DIR / "samba" / "start"
TRASH = ".registry-janitor-trash"
# janitor_gc_grace of molecule.yml, in seconds ("60s" or "2m").
GC_GRACE_SECONDS = (
    int(str(VARS["janitor_gc_grace"])[:-1]) * {"s": 1, "m": 60}[str(VARS["janitor_gc_grace"])[-1]]
)
HELD = ".registry-janitor-held"
# Registry answers again after the share returns: one retry period (5 s, molecule.yml) plus
# `docker compose up --wait` in an emulated guest.
RESUME_LIMIT_SECONDS = 300
# A reboot of the emulated guest: its boot alone took 2-5 minutes on the loaded 2-core machine.
REBOOT_LIMIT_SECONDS = 900
FIGURES = PROJECT / ".cache" / "molecule-vm-figures.json"


@pytest.fixture(autouse=True)
def as_root(host):
    """Every command in the guest as root (the SSH login is the sudo user `molecule`)."""
    with host.sudo():
        yield


def record(name: str, value: object) -> None:
    """Keeps a measured figure in .cache/molecule-vm-figures.json (for the docs)."""
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def run(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """A command on this machine; fails the test with its output unless it exits 0."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{argv}\n--- rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def image(name: str, *, kind: str = "image", size: int = 256 * 1024) -> dict:
    """An OCI layout on this machine (molecule/janitor/files/ocigen.py): a layer shared by all
    images and a random one; returns ocigen's record plus the layout's path."""
    layout = WORK / name
    spec = {"dir": str(layout), "tag": "t", "kind": kind, "shared": "vm", "size": size}
    out = run([sys.executable, str(OCIGEN), json.dumps(spec)]).stdout
    return {**json.loads(out), "layout": layout}


def push(made: dict, ref: str) -> None:
    run(
        [
            *SKOPEO,
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--all",
            f"oci:{made['layout']}:t",
            f"docker://{REG}/{ref}",
        ]
    )


def pull_completely(ref: str) -> None:
    """Every blob of the image (all platforms) fetched and checked against its digest."""
    dest = WORK / ("pull-" + ref.replace("/", "_").replace(":", "_"))
    run(["rm", "-rf", str(dest)])
    run(
        [
            *SKOPEO,
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--all",
            f"docker://{REG}/{ref}",
            f"oci:{dest}:t",
        ]
    )


def tag_digest(repo: str, tag: str) -> str | None:
    request = urllib.request.Request(
        f"http://{REG}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json,"
            "application/vnd.oci.image.index.v1+json"
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def tags(repo: str) -> list[str]:
    with urllib.request.urlopen(f"http://{REG}/v2/{repo}/tags/list", timeout=60) as response:
        return sorted(json.load(response)["tags"] or [])


def registry_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REG}/v2/", timeout=10) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def root_disk_under_mount_point(host) -> list[str]:
    """What the guest's root filesystem holds under the mount point itself (hidden while the
    share is mounted): a bind mount of / shows it."""
    return sh(
        host,
        f"""
set -eu
view=$(mktemp -d)
mount --bind / "$view"
find "$view{MOUNT}" -mindepth 1 -maxdepth 3 | sed "s|^$view||"
umount "$view" && rmdir "$view"
""",
    ).split()


def smbd_running() -> bool:
    try:
        os.kill(int(SMBD_PIDFILE.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def stop_smbd() -> None:
    # Its whole process group (samba/start: setsid): the connection's child smbd too, which
    # would otherwise go on serving the guest.
    os.killpg(os.getpgid(int(SMBD_PIDFILE.read_text())), 15)
    deadline = time.monotonic() + 30
    while smbd_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not smbd_running(), "smbd did not stop"


def start_smbd() -> None:
    run([str(SMBD_START)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if smbd_running():
            return
        time.sleep(0.2)
    raise AssertionError("smbd did not start")


def wait_until(what: str, check, limit: float, every: float = 2.0) -> float:
    """Seconds until check() holds; fails after `limit` seconds."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"{what}: not within {limit} s"
        time.sleep(every)
    return time.monotonic() - start


def sweep(host) -> str:
    """One sweep as the timer runs it (registry-janitor.service, a oneshot)."""
    cursor = journal_cursor(host)
    result = host.run("timeout 900 systemctl start registry-janitor.service")
    log = unit_journal(host, "registry-janitor.service", after_cursor=cursor)
    assert result.rc == 0, f"{result.stderr}\n{log}"
    return log


@pytest.fixture(scope="module", autouse=True)
def workdir():
    WORK.mkdir(parents=True, exist_ok=True)
    return WORK


def test_1_share_is_mounted_by_the_kernel_cifs_client_from_fstab(host):
    fstab = host.file("/etc/fstab").content_string
    line = next(entry for entry in fstab.splitlines() if f" {MOUNT} " in entry)
    assert line.split()[2] == "cifs"
    assert "vers=3.1.1" in line and "seal" in line and "credentials=" in line
    assert VARS["storagebox_password"] not in fstab
    cred = host.file("/etc/storagebox-storagebox.cred")
    assert (cred.user, cred.group, cred.mode) == ("root", "root", 0o600)
    fstype, options = sh(host, f"findmnt -n -o FSTYPE,OPTIONS {MOUNT}").split()
    assert fstype == "cifs"
    for option in ("vers=3.1.1", "seal", "uid=10000", "gid=10000"):
        assert option in options.split(","), options
    # The kernel's defaults the janitor relies on (see roles/storagebox/defaults/main.yml).
    assert "cache=strict" in options and "actimeo=1" in options, options
    record("mount_options", options)
    assert host.service("registry-cache.service").is_running


def test_2_share_probe_warns_about_case_on_the_kernel_client(host):
    results = json.loads(host.file("/var/lib/registry-cache/storagebox-probe.json").content_string)
    checks = {check["name"]: check for check in results["checks"]}
    assert results["status"] == "warn", results
    assert checks["case"]["status"] == "warn", checks["case"]
    # Every other check passes or warns (delete-pending may make rmdir_after_unlink warn).
    assert all(c["status"] != "fail" for c in checks.values()), checks
    record(
        "probe",
        {
            name: [c["status"], c["detail"], round(c["seconds"], 2) if "seconds" in c else None]
            for name, c in checks.items()
        },
    )


def test_3_push_and_pull_from_this_machine_through_the_forwarded_port(host):
    single = image("single")
    index = image("index", kind="index")
    start = time.monotonic()
    push(single, "vm/app:single")
    push(index, "vm/app:index")
    pushed = time.monotonic() - start
    start = time.monotonic()
    pull_completely("vm/app:single")
    pull_completely("vm/app:index")
    record("push_seconds_single_plus_index", round(pushed, 1))
    record("pull_seconds_single_plus_index", round(time.monotonic() - start, 1))
    assert tag_digest("vm/app", "single") == single["digest"]
    assert tag_digest("vm/app", "index") == index["digest"]
    # Every blob reached Samba's own storage, and the guest's root disk holds none of it.
    for digest in {**single["blobs"], **index["blobs"]}:
        assert Path(blob_data(str(SERVER_V2), digest)).is_file(), digest
    assert root_disk_under_mount_point(host) == []


def test_4_sweep_with_the_janitors_gc_leaves_nothing_behind(host):
    """Four tags, keep_last_n 2 (molecule.yml): the two oldest go with their unique blobs;
    the janitor's trash and held blobs are emptied (delete-pending on SMB may leave some for
    the next sweep, which must then take them)."""
    made = {}
    for n in range(4):
        made[n] = image(f"sweep{n}")
        push(made[n], f"vm/sweep:t{n}")
        time.sleep(1.1)  # distinct push times
    pushed = time.monotonic()
    # Pushed "hours ago" (order kept): beyond the revision and GC grace periods.
    age_links(host, 4 * 3600, f"{V2}/repositories/vm/sweep")
    # The registry's log dates the pushes' requests now: GC spares their blobs for
    # janitor_gc_grace (60 s in molecule.yml), which no file date can shorten.
    time.sleep(max(0.0, GC_GRACE_SECONDS + 5 - (time.monotonic() - pushed)))
    start = time.monotonic()
    first = sweep(host)
    record("sweep_seconds_first", round(time.monotonic() - start, 1))
    start = time.monotonic()
    second = sweep(host)
    record("sweep_seconds_second", round(time.monotonic() - start, 1))
    assert tags("vm/sweep") == ["t2", "t3"], first
    for n in (0, 1):
        for digest in made[n]["unique"]:
            if digest in made[n]["blobs"]:
                assert not Path(blob_data(str(SERVER_V2), digest)).exists(), (digest, first, second)
    for n in (2, 3):
        pull_completely(f"vm/sweep:t{n}")
    # The janitor keeps `<held>/blobs` itself as an anchor (backends.py): what is below counts.
    leftovers = sh(
        host,
        f"find {DATA}/{TRASH} {DATA}/{HELD} -mindepth 1 -not -path '*/{HELD}/blobs' 2>/dev/null"
        " || true",
    ).split()
    assert leftovers == [], (leftovers, first, second)
    server = SERVER_V2.parents[2]
    server_left = [
        str(p)
        for d in (TRASH, HELD)
        for p in (server / d).glob("**/*")
        if p != server / HELD / "blobs"
    ]
    assert server_left == [], server_left
    # The earlier test's images are untouched.
    pull_completely("vm/app:index")


def test_5_tags_differing_only_in_case_are_one_tag_on_the_share(host):
    lower = image("case-lower")
    upper = image("case-upper")
    push(lower, "vm/case:latest")
    push(upper, "vm/case:Latest")
    on_server = sorted(
        p.name for p in (SERVER_V2 / "repositories/vm/case/_manifests/tags").iterdir()
    )
    listed = tags("vm/case")
    latest, upper_tag = tag_digest("vm/case", "latest"), tag_digest("vm/case", "Latest")
    record(
        "case",
        {
            "server_tag_dirs": on_server,
            "tags_list": listed,
            "latest_is": "Latest image" if latest == upper["digest"] else latest,
            "Latest_is": "Latest image" if upper_tag == upper["digest"] else upper_tag,
        },
    )
    # One directory on the server: the second push rewrote `latest`.
    assert on_server == ["latest"]
    assert listed == ["latest"]
    assert latest == upper["digest"]
    pull_completely("vm/case:latest")


def test_6_verify_finds_the_store_intact_then_a_damaged_blob(host):
    cursor = journal_cursor(host)
    result = host.run("timeout 900 systemctl start registry-janitor-verify.service")
    log = unit_journal(host, "registry-janitor-verify.service", after_cursor=cursor)
    assert result.rc == 0, f"{result.stderr}\n{log}"
    record("verify_log_healthy", log.strip().splitlines()[-3:])
    # Damage a layer behind the client's back, on the server: verify must see the server's bytes.
    victim = image("verify-victim")
    push(victim, "vm/verify:v1")
    layer = next(d for d in victim["unique"] if victim["blobs"][d] > 100 * 1024)
    path = Path(blob_data(str(SERVER_V2), layer))
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    # Rot, not a write: the janitor leaves a blob whose data changed in the last 10 min alone
    # (an upload in progress?), so the damaged file gets an mtime an hour back.
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    time.sleep(2)  # beyond the client's attribute cache (actimeo=1)
    cursor = journal_cursor(host)
    host.run("timeout 900 systemctl start registry-janitor-verify.service")
    log = unit_journal(host, "registry-janitor-verify.service", after_cursor=cursor)
    record("verify_log_damaged", [line for line in log.splitlines() if "CORRUPT" in line][:3])
    assert "CORRUPT" in log and layer.removeprefix("sha256:") in log, log
    # The damaged image is pushed again, which heals it (see the README's Corrupt blobs).
    push(victim, "vm/verify:v1")
    pull_completely("vm/verify:v1")


def test_7a_storage_box_blip_while_mounted_heals_without_a_manual_step(host):
    """smbd stops for a while and comes back; the share stays mounted (the kernel client
    reconnects): pushes work again without anything done in the guest."""
    stop_smbd()
    try:
        time.sleep(15)
        down = registry_answers()
        record("blip_registry_v2_answers_while_smbd_down", down)
        assert root_disk_under_mount_point(host) == []
    finally:
        start_smbd()

    def pushes() -> bool:
        try:
            push(image("blip"), "vm/blip:after")
            return True
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    seconds = wait_until("a push after the blip", pushes, RESUME_LIMIT_SECONDS, 5)
    record("blip_seconds_to_first_push", round(seconds, 1))
    pull_completely("vm/app:single")
    assert root_disk_under_mount_point(host) == []


def test_7b_storage_box_away_registry_stops_and_comes_back_by_itself(host):
    """The share unmounted while the box is away (as at a boot without it): the registry
    stops with the mount, does not start, nothing lands on the root disk; the box returns and
    the retry timer mounts it and starts the registry, with no command in the guest."""
    stop_smbd()
    try:
        sh(host, f"timeout 120 systemctl stop {MOUNT_UNIT} || timeout 60 umount -l {MOUNT}")
        assert host.run(f"mountpoint -q {MOUNT}").rc != 0
        assert not host.service("registry-cache.service").is_running
        time.sleep(20)  # several retry periods (5 s) fail meanwhile
        assert host.run(f"mountpoint -q {MOUNT}").rc != 0
        assert not host.service("registry-cache.service").is_running
        assert not registry_answers()
        assert root_disk_under_mount_point(host) == []
        journal = unit_journal(host, MOUNT_UNIT, since=int(time.time()) - 60)
        record("away_mount_journal", journal.strip().splitlines()[-3:])
    finally:
        start_smbd()
    seconds = wait_until(
        "registry answers after the share returned", registry_answers, RESUME_LIMIT_SECONDS
    )
    record("away_seconds_registry_back", round(seconds, 1))
    assert host.run(f"mountpoint -q {MOUNT}").rc == 0
    pull_completely("vm/app:index")
    assert root_disk_under_mount_point(host) == []


def test_8_reboot_brings_the_mount_and_the_registry_back(host):
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    host.run("systemctl reboot")
    start = time.monotonic()

    def rebooted() -> bool:
        try:
            new = subprocess.run(
                [
                    "ssh",
                    "-p",
                    str(VARS["ansible_port"]),
                    "-i",
                    VARS["ansible_ssh_private_key_file"],
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "ConnectTimeout=10",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ControlPath=none",
                    "molecule@127.0.0.1",
                    "cat /proc/sys/kernel/random/boot_id",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            return False
        return bool(new) and new != boot_id

    wait_until("the guest is back", rebooted, REBOOT_LIMIT_SECONDS, 5)
    wait_until("the registry answers", registry_answers, REBOOT_LIMIT_SECONDS)
    record("reboot_seconds_registry_back", round(time.monotonic() - start, 1))
    pull_completely("vm/app:index")
    pull_completely("vm/sweep:t3")
