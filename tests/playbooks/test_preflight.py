"""site.yml rejects bad variables in its preflight play, before any role changes a host.

Every case runs `ansible-playbook site.yml` with one bad value against its own throwaway
target: a container of the test host image with no network, reached with `docker exec`
(community.docker.docker), started for the case and removed after it. The cases run at
the same time (JOBS at once). A case passes when the run fails, the failing task names the variable, no
task reported a change, only the preflight play ran, and `docker diff` of the target is
the same before and after. Control cases run the preflight with valid values (the defaults,
and values right next to some bad ones): they pass and change nothing, so the failures come
from the bad values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry-cache/test-host:trixie"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
PREFLIGHT_PLAY = "Check every role's variables before anything changes"
# The playbook under test. To see the test fail, point it at a copy of playbooks/site.yml
# without the preflight import (it must live in playbooks/, beside roles/ and collections/).
SITE = os.environ.get("PREFLIGHT_TEST_SITE", "site.yml")
# Cases run at a time: each is an ansible-playbook process; all of them at once on 2 cores
# took 308 s, 8 at a time 137 s (the processes no longer fight over the CPU).
JOBS = int(os.environ.get("PREFLIGHT_TEST_JOBS", 4 * (os.cpu_count() or 2)))
# Valid values every case starts from; nothing but the credentials file may show it.
PASSWORD = "preflight-Vb72qL-not-a-real-password"
BASE_VARS: dict[str, Any] = {
    "storagebox_password": PASSWORD,
    "storagebox_mount_state": "present",
}

# An htpasswd password in some cases: it must not be printed either.
AUTH_PASSWORD = "preflight-Rk41mZ-auth-not-a-real-password"
AUTH_USERS = [{"name": "ci", "password": AUTH_PASSWORD}]

# A pull-through mirror that is fine on its own; the mirror cases change one thing. Its
# password must not be printed either.
MIRROR_PASSWORD = "preflight-Jq5vT2-mirror-not-a-real-password"
MIRROR = {"name": "hub", "remote_url": "https://registry-1.docker.io", "port": 5001}


def mirrors(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"registry_mirrors": [{**MIRROR, **entry} for entry in entries]}


# A bucket (registry_storage: s3) that is fine on its own; its secret key must not be printed.
S3_SECRET = "preflight-Wm83sK-s3-not-a-real-secret"
S3: dict[str, Any] = {
    "registry_storage": "s3",
    "registry_s3_region_endpoint": "https://fsn1.your-objectstorage.com",
    "registry_s3_region": "fsn1",
    "registry_s3_bucket": "ci-cache",
    "registry_s3_access_key": "preflight-access-key",
    "registry_s3_secret_key": S3_SECRET,
}
# A case's key HOSTS: one target container per entry, each entry its host variables (in the
# inventory, so extra vars do not override them); without it one target.
HOSTS = "__hosts__"


# case: (extra vars, the variables the failure must name)
BAD: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "negative-keep-count": ({"janitor_keep_last_n": -1}, ("janitor_keep_last_n",)),
    "bad-calendar": ({"janitor_on_calendar": "not a calendar"}, ("janitor_on_calendar",)),
    # `10M`: minutes or megabytes? The janitor refuses it, so the role does before it lands.
    "ambiguous-verify-budget": ({"janitor_verify_budget": "10M"}, ("janitor_verify_budget",)),
    "malformed-cidr": (
        {"registry_cache_allowed_cidrs": ["10.0.0.0/33"]},
        ("registry_cache_allowed_cidrs",),
    ),
    "bad-share-path": ({"storagebox_share": "../x"}, ("storagebox_share",)),
    # The setting's old name: refused with the new one, not ignored (the port would move).
    "renamed-bind-address": (
        {"registry_bind_address": "10.0.0.5"},
        ("registry_bind_addresses", "10.0.0.5", "remove the setting"),
    ),
    "bind-address-not-an-address": (
        {"registry_bind_addresses": ["0.0.0.0", "10.0.0.0/8"]},
        ("registry_bind_addresses", "10.0.0.0/8"),
    ),
    "wrong-type": ({"janitor_concurrency": "eight"}, ("janitor_concurrency",)),
    # A failing check on the password must not print it (no_log): see the PASSWORD check.
    "two-line-password": (
        {"storagebox_password": f"{PASSWORD}\nsecond line"},
        ("storagebox_password",),
    ),
    "bad-image-refresh-calendar": (
        {"registry_image_refresh_on_calendar": "weekly-ish"},
        ("registry_image_refresh_on_calendar",),
    ),
    "bad-retry-calendar": (
        {"storagebox_mount_retry_on_calendar": "every minute"},
        ("storagebox_mount_retry_on_calendar",),
    ),
    # With the share mounted by Ansible, data outside it would land on the root disk.
    "data-outside-the-share": (
        {"storagebox_mount_state": "mounted", "registry_data_dir": "/var/lib/registry"},
        ("registry_data_dir", "storagebox_mount_path", "storagebox_mount_state"),
    ),
    "data-is-the-mount-point": (
        {"storagebox_mount_state": "mounted", "registry_data_dir": "/mnt/storagebox/"},
        ("registry_data_dir", "storagebox_mount_path"),
    ),
    "data-escapes-the-share": (
        {"storagebox_mount_state": "mounted", "registry_data_dir": "/mnt/storagebox/../srv"},
        ("registry_data_dir", "storagebox_mount_path"),
    ),
    "share-owner-differs": (
        {"storagebox_uid": 10001},
        ("storagebox_uid", "registry_uid"),
    ),
    "share-group-differs": (
        {"registry_gid": 10001},
        ("storagebox_gid", "registry_gid"),
    ),
    "auth-over-plain-http": (
        {"registry_auth_users": AUTH_USERS},
        ("registry_auth_users", "registry_tls_certificate", "registry_auth_allow_plain_http"),
    ),
    "api-deletes-without-auth": (
        {"registry_delete_enabled": True},
        ("registry_delete_enabled", "registry_auth_users"),
    ),
    "mirror-port-of-the-registry": (mirrors({"port": 5000}), ("registry_mirrors", "registry_port")),
    "mirror-port-of-the-registry-metrics": (
        mirrors({"port": 5090}),
        ("registry_mirrors", "registry_metrics_port"),
    ),
    "registry-metrics-port-of-the-registry": (
        {"registry_metrics_port": 5000},
        ("registry_metrics_port", "registry_port"),
    ),
    "mirror-port-of-another-mirror": (
        mirrors({}, {"name": "ghcr", "remote_url": "https://ghcr.io"}),
        ("registry_mirrors", "port 5001"),
    ),
    "mirror-url-without-scheme": (
        mirrors({"remote_url": "registry-1.docker.io"}),
        ("registry_mirrors", "remote_url"),
    ),
    "mirror-password-without-username": (
        mirrors({"password": MIRROR_PASSWORD}),
        ("registry_mirrors", "username"),
    ),
    # Whoever reaches a mirror without logging in pulls with its upstream account.
    "mirror-account-served-without-login": (
        mirrors({"username": "ci-bot", "password": MIRROR_PASSWORD, "auth": False}),
        ("registry_mirrors", "share_upstream_account", "private"),
    ),
    "mirror-duplicate-names": (mirrors({}, {"port": 5002}), ("registry_mirrors", "name")),
    # The janitor sweeps registry_data_dir: a mirror's store must never be inside it.
    "mirror-store-in-the-push-store": (
        mirrors({"data_dir": "/mnt/storagebox/registry/mirrors/hub"}),
        ("registry_mirrors", "data_dir", "registry_data_dir"),
    ),
    "mirror-without-port": (
        {"registry_mirrors": [{"name": "hub", "remote_url": "https://registry-1.docker.io"}]},
        ("registry_mirrors", "port"),
    ),
    # With the share mounted by Ansible, a mirror's data outside it would land on the root
    # disk.
    "mirror-store-outside-the-share": (
        {"storagebox_mount_state": "mounted", **mirrors({"data_dir": "/var/lib/mirrors/hub"})},
        ("registry_mirrors", "storagebox_mount_path"),
    ),
    # On a bucket served by several hosts a read-only window would have to switch them all.
    "s3-with-the-registry-gc-engine": (
        {**S3, "janitor_gc_engine": "registry"},
        ("janitor_gc_engine", "registry_storage"),
    ),
    "s3-janitor-host-outside-the-group": (
        {**S3, "janitor_host": "no-such-host"},
        ("janitor_host", "registry_cache"),
    ),
    "s3-without-keys": (
        {**S3, "registry_s3_access_key": "", "registry_s3_secret_key": ""},
        ("registry_s3_access_key", "registry_s3_secret_key"),
    ),
    "s3-bad-bucket-name": ({**S3, "registry_s3_bucket": "CI_Cache"}, ("registry_s3_bucket",)),
    # The janitor host reads only its own registry's log and notifications: another host's
    # pulls are unseen.
    "pull-rules-on-a-shared-bucket": (
        {HOSTS: [S3, S3], "janitor_keep_pulled_within": "7d"},
        ("janitor_keep_pulled_within", "registry_storage"),
    ),
    "notifications-on-a-shared-bucket": (
        {HOSTS: [S3, S3], "registry_notifications_enabled": True},
        ("registry_notifications_enabled", "registry_storage"),
    ),
    "notifications-not-a-boolean": (
        {"registry_notifications_enabled": "sometimes"},
        ("registry_notifications_enabled",),
    ),
    "bad-pull-window": ({"janitor_keep_pulled_within": "7 days"}, ("janitor_keep_pulled_within",)),
    "s3-unknown-storage": ({"registry_storage": "nfs"}, ("registry_storage",)),
    # Two hosts, each with its own janitor, on one Storage Box share.
    "two-hosts-one-share": (
        {HOSTS: [{}, {}], "storagebox_mount_state": "mounted"},
        ("storagebox_share", "registry_storage: s3"),
    ),
    "two-hosts-different-storage": (
        {HOSTS: [{}, S3]},
        ("registry_storage",),
    ),
}
CONTROL = "valid-values"
# More valid values, each next to a bad case above: the check refuses only what it should.
GOOD: dict[str, dict[str, Any]] = {
    "verify-budget-size-and-time": {"janitor_verify_budget": "500MB, 1h"},
    "data-inside-the-mounted-share": {
        "storagebox_mount_state": "mounted",
        "registry_data_dir": "/mnt/storagebox/cache/registry/",
    },
    "auth-with-plain-http-allowed": {
        "registry_auth_users": AUTH_USERS,
        "registry_auth_allow_plain_http": True,
        "registry_delete_enabled": True,
    },
    "valid-mirrors": mirrors(
        {"username": "ci-bot", "password": MIRROR_PASSWORD, "share_upstream_account": True},
        {"name": "ghcr", "remote_url": "https://ghcr.io", "port": 5002, "auth": False},
    ),
    "mirror-account-behind-login": {
        "registry_auth_users": AUTH_USERS,
        "registry_auth_allow_plain_http": True,
        **mirrors({"username": "ci-bot", "password": MIRROR_PASSWORD}),
    },
    "mirror-stores-inside-the-mounted-share": {
        "storagebox_mount_state": "mounted",
        **mirrors({"data_dir": "/mnt/storagebox/cache/hub"}),
    },
    # On a bucket the storagebox role does nothing: its password is not needed.
    "s3-without-storagebox-password": {**S3, "storagebox_password": ""},
    "two-hosts-on-one-bucket": {HOSTS: [S3, S3]},
    "pull-rules-on-a-bucket-with-one-host": {**S3, "janitor_keep_pulled_within": "7d"},
    "notifications-on-a-bucket-with-one-host": {**S3, "registry_notifications_enabled": True},
    "notifications-off": {"registry_notifications_enabled": False},
    "two-hosts-each-its-own-share": {
        HOSTS: [{"storagebox_share": "u1-sub1"}, {"storagebox_share": "u1-sub2"}],
        "storagebox_mount_state": "mounted",
    },
}


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    diff_before: str
    diff_after: str

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    @property
    def failed_results(self) -> list[dict[str, Any]]:
        return [
            {"task": task["task"]["name"], **result}
            for play in self.report["plays"]
            for task in play["tasks"]
            for result in task["hosts"].values()
            if result.get("failed") or result.get("failed_when_result")
        ]


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def _run_case(name: str, extra_vars: dict[str, Any], playbook: str, tmp: Path) -> Run:
    extra_vars = dict(extra_vars)
    host_vars: list[dict[str, Any]] = extra_vars.pop(HOSTS, [{}])
    containers = [f"registry-cache-preflight-{name}-{uuid.uuid4().hex[:8]}" for _ in host_vars]
    for container in containers:
        _docker("run", "-d", "--rm", "--network", "none", "--name", container, IMAGE,
                "sleep", "infinity")  # fmt: skip
    try:
        inventory = tmp / f"{name}-inventory.json"
        hosts = {
            container: {
                "ansible_connection": "community.docker.docker",
                "ansible_host": container,
                "ansible_python_interpreter": "/usr/bin/python3",
                **own,
            }
            for container, own in zip(containers, host_vars, strict=True)
        }
        inventory.write_text(json.dumps({"registry_cache": {"hosts": hosts, "vars": BASE_VARS}}))
        extra = tmp / f"{name}-extra-vars.json"
        extra.write_text(json.dumps(extra_vars))
        before = "".join(_docker("diff", container) for container in containers)
        env = {
            **os.environ,
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
            "ANSIBLE_NOCOLOR": "1",
        }
        proc = subprocess.run(
            [ANSIBLE_PLAYBOOK, "-i", str(inventory), "-e", f"@{extra}", playbook],
            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        after = "".join(_docker("diff", container) for container in containers)
        return Run(proc.returncode, proc.stdout, proc.stderr, before, after)
    finally:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Run]]:
    image = subprocess.run(["docker", "image", "inspect", IMAGE], check=False, capture_output=True)
    if image.returncode:
        pytest.fail(f"{IMAGE} is missing: make images")
    jobs = {name: (extra, SITE) for name, (extra, _) in BAD.items()}
    jobs[CONTROL] = ({}, "playbooks/preflight.yml")
    jobs.update({name: (extra, "playbooks/preflight.yml") for name, extra in GOOD.items()})
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(JOBS) as pool:
        futures = {
            name: pool.submit(_run_case, name, extra, playbook, Path(tmp))
            for name, (extra, playbook) in jobs.items()
        }
        yield {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", [CONTROL, *sorted(GOOD)])
def test_valid_values_pass_the_preflight_and_change_nothing(
    runs: dict[str, Run], case: str
) -> None:
    run = runs[case]
    assert run.rc == 0, run.stdout[-3000:] + run.stderr[-3000:]
    stats = run.report["stats"]
    assert {s["changed"] for s in stats.values()} == {0}
    assert run.diff_after == run.diff_before
    assert AUTH_PASSWORD not in run.stdout + run.stderr
    assert MIRROR_PASSWORD not in run.stdout + run.stderr
    assert S3_SECRET not in run.stdout + run.stderr


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_stops_site_yml_before_the_host_changes(runs: dict[str, Run], case: str) -> None:
    run = runs[case]
    assert run.rc != 0, f"{case}: site.yml accepted {BAD[case][0]}"
    report = run.report
    assert {s["changed"] for s in report["stats"].values()} == {0}
    # One failure (with two hosts, a check across them fails once, on the first).
    assert sum(s["failures"] for s in report["stats"].values()) == 1
    # Only the preflight play started: no role task ran.
    assert [p["play"]["name"] for p in report["plays"]] == [PREFLIGHT_PLAY]
    assert run.diff_after == run.diff_before, "the target's files changed"
    assert PASSWORD not in run.stdout + run.stderr
    assert AUTH_PASSWORD not in run.stdout + run.stderr
    assert MIRROR_PASSWORD not in run.stdout + run.stderr
    assert S3_SECRET not in run.stdout + run.stderr


@pytest.mark.parametrize(
    "case",
    sorted(BAD),
)
def test_the_failure_names_the_variables(runs: dict[str, Run], case: str) -> None:
    run = runs[case]
    failures = run.failed_results
    assert failures, run.stdout[-3000:]
    for variable in BAD[case][1]:
        assert variable in json.dumps(failures), json.dumps(failures, indent=1)
