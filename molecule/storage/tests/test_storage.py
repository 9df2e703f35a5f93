"""The Storage Box goes missing and comes back, checked inside the host.

The share is a stand-in: mnt-storagebox.mount mounts /srv/storagebox-standin through a
mount helper that fails like mount.cifs while the directory is missing (see prepare.yml). A trial takes the share away the way a Storage Box outage at boot looks to
systemd: the mount is stopped and its source is gone, so every start of the mount fails.
Then: the registry is down and does not start, the janitor refuses, the journal says why,
nothing lands under the empty mount point. The source comes back and, with no systemctl
from the test, the retry timer mounts it and the registry answers and takes pushes again.
The time from "source back" to "registry answers" is measured in every trial.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
from registry_cache_testing import controller_tool, unit_journal

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-storage")

MOUNT = "/mnt/storagebox"
MOUNT_UNIT = "mnt-storagebox.mount"
STANDIN = "/srv/storagebox-standin"
AWAY = "/srv/storagebox-standin.away"
DATA = f"{MOUNT}/registry"
V2 = "http://127.0.0.1:5000/v2/"
COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"
# storagebox_mount_retry_on_calendar in molecule.yml: every 5 s.
RETRY_SECONDS = 5
# Resuming takes one retry period plus `docker compose up --wait` (the registry's health
# check starts after 1 s); anything near this limit is a regression.
RESUME_LIMIT_SECONDS = 60
TRIALS = 3
FIGURES = Path(__file__).resolve().parents[3] / ".cache" / "molecule-storage-resume.json"


def push(host, tag):
    """Builds a one-file image, pushes it, pulls it back; returns the result."""
    image = f"127.0.0.1:5000/storage/probe:{tag}"
    return host.run(
        f"""
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "{tag} $(date +%s%N)" > "$dir/probe.txt"
printf 'FROM scratch\\nCOPY probe.txt /probe.txt\\n' > "$dir/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t {image} "$dir" >/dev/null
docker push -q {image} >/dev/null
docker image rm {image} >/dev/null
docker pull -q {image} >/dev/null
"""
    )


def test_registry_serves_from_the_mounted_share(host):
    assert host.run(f"mountpoint -q {MOUNT}").rc == 0
    assert host.service("registry-cache.service").is_running
    wants = host.check_output(f"systemctl show {MOUNT_UNIT} -p Wants --value").split()
    assert "registry-cache.service" in wants
    requires = host.check_output("systemctl show registry-cache.service -p RequiresMountsFor")
    assert DATA in requires
    timer = host.service("storagebox-mount-retry.timer")
    assert timer.is_enabled and timer.is_running
    result = push(host, "before")
    assert result.rc == 0, result.stdout + result.stderr
    # The data is on the share, not on the root disk.
    assert host.file(
        f"{STANDIN}/registry/docker/registry/v2/repositories/storage/probe"
    ).is_directory


def test_the_share_probe_ran_at_deploy_and_recorded_its_results(host):
    """The storagebox role probes the mounted share (here the stand-in, a local directory:
    case-sensitive, every check passes) and keeps the results and a metric on the host."""
    probe = host.file("/usr/local/libexec/registry-cache/storagebox-probe")
    assert probe.is_file and probe.mode == 0o755 and probe.user == "root"
    results = json.loads(host.file("/var/lib/registry-cache/storagebox-probe.json").content_string)
    assert results["path"] == MOUNT
    assert results["status"] == "ok", results
    assert results["case_sensitive"] is True
    metrics = host.file("/var/lib/registry-cache/metrics/storagebox_probe.prom").content_string
    assert f'storagebox_probe_failures{{path="{MOUNT}"}} 0' in metrics
    assert f'storagebox_probe_case_sensitive{{path="{MOUNT}"}} 1' in metrics
    # It leaves nothing on the share.
    assert host.run(f"ls -A {STANDIN} | grep -c storagebox-probe").stdout.strip() == "0"
    # Run by hand as the role runs it: a share below the free-space floor fails, and says so.
    low = host.run(
        f"/usr/local/libexec/registry-cache/storagebox-probe {MOUNT} --require-mount"
        " --min-free-mib 1000000000"
    )
    assert low.rc == 1, low.stdout
    assert "FAIL free_space" in low.stdout and "storagebox_probe_min_free_mib" in low.stdout


@pytest.mark.parametrize("trial", range(1, TRIALS + 1))
def test_missing_share_stops_everything_and_its_return_resumes_it(host, trial):
    since = host.check_output("date +%s")
    # The Storage Box goes away: the share's source disappears and the mount is stopped
    # (as after a reboot with the box down). registry-cache.service is stopped before it.
    host.run_expect([0], f"mv -T {STANDIN} {AWAY} && systemctl stop {MOUNT_UNIT}")
    assert host.run(f"mountpoint -q {MOUNT}").rc != 0
    assert not host.service("registry-cache.service").is_running
    assert host.run(f"curl -fsS -o /dev/null --max-time 5 {V2}").rc != 0

    # Starting the registry fails on its dependency, and says so.
    start = host.run("systemctl start registry-cache.service")
    assert start.rc != 0
    assert not host.service("registry-cache.service").is_running
    assert host.check_output(f"{COMPOSE} ps -q registry") == ""
    assert "Dependency failed" in unit_journal(host, "registry-cache.service", since=since)

    # The janitor refuses too.
    sweep = host.run("systemctl start registry-janitor.service")
    assert sweep.rc != 0
    assert "Dependency failed" in unit_journal(host, "registry-janitor.service", since=since)

    # Around systemd: Compose does not create the missing bind source either.
    bypass = host.run(f"{COMPOSE} up --detach --no-build registry")
    assert bypass.rc != 0
    assert "does not exist" in bypass.stderr, bypass.stderr
    host.run(f"{COMPOSE} rm --force --stop registry")

    # The retry timer keeps trying (and failing) while the box is away; the mount unit's
    # journal says why.
    host.run(f"sleep {2 * RETRY_SECONDS + 1}")
    mount_log = unit_journal(host, MOUNT_UNIT, since=since)
    assert mount_log.count("Failed to mount") >= 2, mount_log
    assert "Host is down" in mount_log, mount_log
    assert host.run(f"mountpoint -q {MOUNT}").rc != 0
    assert not host.service("registry-cache.service").is_running

    # Nothing was written under the empty mount point, on the root disk.
    assert host.check_output(f"find {MOUNT} -mindepth 1") == ""

    # The box comes back. No systemctl from here on: the timer mounts it and the mount
    # unit starts the registry.
    resumed = host.run(
        f"""
set -eu
mv -T {AWAY} {STANDIN}
t0=$(date +%s%N)
until mountpoint -q {MOUNT}; do
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt {RESUME_LIMIT_SECONDS} ] || exit 3
    sleep 0.1
done
t1=$(date +%s%N)
until curl -fsS -o /dev/null --max-time 2 {V2}; do
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt {RESUME_LIMIT_SECONDS} ] || exit 4
    sleep 0.1
done
t2=$(date +%s%N)
# `docker compose up --wait` returns (and the unit becomes active) once the health check
# has passed, a moment after the first answer.
until systemctl is-active --quiet registry-cache.service; do
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt {RESUME_LIMIT_SECONDS} ] || exit 5
    sleep 0.1
done
t3=$(date +%s%N)
ms() {{ echo "$(( ($1 - t0) / 1000000 ))e-3"; }}
echo "{{\\"mounted_s\\": $(ms $t1), \\"answers_s\\": $(ms $t2), \\"active_s\\": $(ms $t3)}}"
"""
    )
    assert resumed.rc == 0, (
        resumed.stdout
        + resumed.stderr
        + host.run("systemctl status --no-pager registry-cache.service " + MOUNT_UNIT).stdout
    )
    figures = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert figures["active_s"] < RESUME_LIMIT_SECONDS
    FIGURES.parent.mkdir(exist_ok=True)
    previous = json.loads(FIGURES.read_text()) if trial > 1 and FIGURES.exists() else []
    FIGURES.write_text(json.dumps([*previous, {"trial": trial, **figures}], indent=1) + "\n")

    assert host.service("registry-cache.service").is_running
    # Pushes work again, and what was pushed before the outage is still there.
    result = push(host, f"after-{trial}")
    assert result.rc == 0, result.stdout + result.stderr
    assert host.run("docker pull -q 127.0.0.1:5000/storage/probe:before").rc == 0


def test_retry_timer_leaves_a_registry_stopped_by_hand_alone(host):
    # The timer only acts while the share is not mounted: an operator's stop holds.
    assert host.run(f"mountpoint -q {MOUNT}").rc == 0
    host.run_expect([0], "systemctl stop registry-cache.service")
    try:
        host.run(f"sleep {2 * RETRY_SECONDS + 1}")
        assert not host.service("registry-cache.service").is_running
        assert host.run(f"curl -fsS -o /dev/null --max-time 5 {V2}").rc != 0
    finally:
        host.run_expect([0], "systemctl start registry-cache.service")
    assert host.run(f"curl -fsS -o /dev/null --max-time 5 {V2}").rc == 0


# From here on, the host is converged as it stands (the trials above left it as they found
# it): other ways of running the bundle must find nothing to change. These tests take the
# `host` fixture so that pytest keeps them in file order, before the uninstall tests.
ROLE_TAGS = ("firewall", "storagebox", "registry", "janitor")


def without_our_settings() -> dict[str, str]:
    """This environment without Molecule's Ansible settings (its collections path holds
    the checkout's plugins) and without color."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    return {**clean, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def outside_the_checkout(tmp_path: Path, *playbook_args: str, env: dict[str, str] | None = None):
    """ansible-playbook as a user with the inventory in a repository of their own runs it: a
    copy of this scenario's inventory in a directory outside the checkout, run from there,
    with none of the Ansible or Molecule settings of this run (no ansible.cfg of the
    bundle's, no roles or collections path)."""
    inventory = tmp_path / "ops" / "cache"
    shutil.copytree(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent, inventory)
    command = [controller_tool("ansible-playbook"), "-i", str(inventory),
               "--limit", "registry-cache-storage", *playbook_args]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={**without_our_settings(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


def test_site_yml_with_an_inventory_outside_the_checkout_changes_nothing(host, tmp_path):
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    assert changed(outside_the_checkout(tmp_path, str(project / "site.yml"))) == 0


def test_the_installed_collection_converges_the_host_with_no_change(host, tmp_path):
    """The bundle built and installed as an Ansible collection (galaxy.yml), its site
    playbook run by FQCN: the same roles, filters and image build context as the checkout's,
    so the converged host has nothing to change (a file missing from the build would
    change the image's content hash and rebuild it)."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    galaxy = controller_tool("ansible-galaxy")
    built = tmp_path / "built"
    subprocess.run([galaxy, "collection", "build", "--output-path", str(built), project],
                   env=without_our_settings(), check=True, capture_output=True, text=True,
                   timeout=300)  # fmt: skip
    [tarball] = built.glob("registry_cache-bundle-*.tar.gz")
    installed = tmp_path / "collections"
    subprocess.run([galaxy, "collection", "install", "--no-deps", "--force", "-p", str(installed),
                    str(tarball)], env=without_our_settings(), check=True, capture_output=True,
                   text=True, timeout=300)  # fmt: skip
    result = outside_the_checkout(
        tmp_path, "registry_cache.bundle.site", env={"ANSIBLE_COLLECTIONS_PATH": str(installed)}
    )
    assert "TASK [registry_cache.bundle.registry : " in result.stdout  # the collection's roles ran
    assert changed(result) == 0


@pytest.mark.parametrize("tag", ROLE_TAGS)
def test_a_rerun_of_one_concern_by_tag_changes_nothing(host, tmp_path, tag):
    """`--tags firewall` (or storagebox, registry, janitor) for a quick drift rerun: the
    preflight runs with every tag, the tagged role's tasks run, nothing changes."""
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    result = outside_the_checkout(tmp_path, str(project / "site.yml"), "--tags", tag)
    assert changed(result) == 0
    assert "Check every role's variables" in result.stdout


# The uninstall tests come last in this file: they take the cache off the host (pytest-xdist
# runs a file on one worker, in order).
BLOBS = f"{STANDIN}/registry/docker/registry/v2/blobs"


def uninstall(*args: str) -> subprocess.CompletedProcess[str]:
    """playbooks/uninstall.yml from the project against this scenario's host."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    command = [
        controller_tool("ansible-playbook"),
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        "--limit",
        "registry-cache-storage",
        "playbooks/uninstall.yml",
        *args,
    ]
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=os.path.join(project, "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    result = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


def changed(result: subprocess.CompletedProcess[str]) -> int:
    recap = re.search(r"registry-cache-storage\s*:.*changed=(\d+)", result.stdout)
    assert recap, result.stdout[-2000:]
    return int(recap.group(1))


def stored_blobs(host) -> int:
    return int(host.check_output(f"find {BLOBS} -name data -type f | wc -l"))


def test_uninstall_in_check_mode_changes_nothing(host):
    result = uninstall("--check", "--diff")
    assert changed(result) > 0, "check mode shows nothing to remove on an installed host"
    assert host.service("registry-cache.service").is_running
    assert host.file("/opt/registry-cache/compose.yml").exists
    assert host.run("nft list table inet registry_cache").rc == 0


def test_uninstall_removes_the_cache_and_keeps_the_stored_images(host):
    blobs = stored_blobs(host)
    assert blobs > 0
    uninstall()
    # list-unit-files exits 1 when nothing matches: the outcome wanted here.
    units = host.run("systemctl list-unit-files --no-legend 'registry-*' 'storagebox-*'")
    assert units.stdout.strip() == "", units.stdout
    for path in [
        "/opt/registry-cache",
        "/etc/systemd/system/registry-cache.service",
        "/usr/local/sbin/registry-cache-sweep",
        "/usr/local/sbin/registry-cache-image-refresh",
        "/var/lib/registry-cache",
        "/etc/storagebox-storagebox.cred",
        "/etc/logrotate.d/registry-cache",
        "/etc/nftables.d/registry-cache.nft",
    ]:
        assert not host.file(path).exists, path
    assert (
        host.check_output("docker ps -aq --filter label=com.docker.compose.project=registry-cache")
        == ""
    )
    assert host.check_output("docker image ls -q registry-cache/registry") == ""
    assert MOUNT not in host.file("/etc/fstab").content_string
    assert host.run(f"mountpoint -q {MOUNT}").rc != 0
    assert host.run("nft list table inet registry_cache").rc != 0
    assert host.run("getent passwd registry-cache").rc != 0
    # The share keeps every stored blob.
    assert stored_blobs(host) == blobs


def test_uninstall_again_changes_nothing(host):
    assert changed(uninstall()) == 0


def test_uninstall_with_purge_data_deletes_the_stored_images(host):
    # The share mounted again (the stand-in's own unit): purge_data deletes what is on it.
    host.run_expect([0], f"systemctl start {MOUNT_UNIT}")
    assert stored_blobs(host) > 0
    uninstall("-e", "purge_data=true")
    assert not host.file(f"{STANDIN}/registry").exists
    assert host.run(f"mountpoint -q {MOUNT}").rc != 0
