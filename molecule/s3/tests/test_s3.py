"""Two cache hosts on one bucket (registry_storage: s3), the RADOS Gateway as the bucket.

Host A (registry-cache-s3-a, the group's first host) is janitor_host; host B serves the
same bucket with the same http.secret and redirects layer pulls to the bucket
(registry_s3_redirect). The tests run in file order, from host A's point of view; host B
and the gateway are reached with testinfra.get_host. Clients run inside the hosts (skopeo,
docker, curl against each host's own 127.0.0.1:5000), as a CI runner behind a load
balancer would reach one host or the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import testinfra
import testinfra.utils.ansible_runner
from registry_cache_testing import journal_cursor, sh, sweep_by_service, unit_journal

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-s3-a")
HOST_B = testinfra.get_host("docker://registry-cache-s3-b")
GATEWAY = testinfra.get_host("docker://registry-cache-s3-gateway")

SECRET = "molecule-s3-Tn4pX8-not-a-real-secret"
BUCKET = "registry-cache-molecule"
REGISTRY = "127.0.0.1:5000"
LOAD = "/usr/local/lib/molecule-s3/pushload.py"
WORK = "/var/tmp/pushload"
OUT, STOP, STATE = f"{WORK}/out.jsonl", f"{WORK}/stop", f"{WORK}/checked.json"
# How long each host pushes; the sweeps go on until both loads have ended.
LOAD_SECONDS = 60
REVISION_GRACE_S = 20  # janitor_revision_grace in molecule.yml
RECLAIMED = re.compile(r"(\d+) blobs? / [^,]* reclaimed")


def push_random_image(host, ref: str) -> None:
    """A one-layer image of fresh random bytes, built and pushed with the docker CLI."""
    sh(
        host,
        "set -e; d=$(mktemp -d); head -c 65536 /dev/urandom > $d/data; "
        f"tar -C $d -c data | docker import - {REGISTRY}/{ref} >/dev/null; "
        f"docker push -q {REGISTRY}/{ref} >/dev/null; docker rmi -f {REGISTRY}/{ref} >/dev/null; "
        "rm -rf $d",
    )


def pull_completely(host, ref: str) -> None:
    """skopeo copies every blob and checks each against its digest."""
    sh(
        host,
        f"rm -rf /var/tmp/pulled && skopeo --insecure-policy copy -q --src-tls-verify=false "
        f"docker://{REGISTRY}/{ref} oci:/var/tmp/pulled:x",
    )


def wait_for_registry(host, seconds: int = 120) -> None:
    deadline = time.monotonic() + seconds
    while host.run(f"curl -fsS -m 5 -o /dev/null http://{REGISTRY}/v2/").rc != 0:
        assert time.monotonic() < deadline, f"registry not answering after {seconds} s"
        time.sleep(2)


def test_no_storage_box_and_the_secret_only_in_its_file(host):
    for h in (host, HOST_B):
        # The storagebox role did nothing (cifs-utils is in the test image anyway).
        assert not h.file("/etc/storagebox-storagebox.cred").exists
        assert "cifs" not in h.file("/etc/fstab").content_string
        assert h.run("systemctl list-units --all --no-legend '*mount-retry*'").stdout.strip() == ""
        env = h.file("/opt/registry-cache/s3.env")
        assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
        assert f"REGISTRY_STORAGE_S3_SECRETKEY={SECRET}" in env.content_string
        # Nowhere else on disk, in the journal or in a process's arguments.
        files = h.run(
            f"grep -rlF -- {SECRET} /etc /opt/registry-cache /var/lib/registry-cache /usr/local"
        ).stdout.split()
        assert files == ["/opt/registry-cache/s3.env"]
        assert h.run(f"journalctl --no-pager -o cat | grep -cF -- {SECRET}").stdout.strip() == "0"
        assert SECRET not in h.check_output("ps -eo args")
        config = h.file("/opt/registry-cache/config.yml").content_string
        assert f"bucket: {BUCKET}" in config and "secretkey" not in config


def test_every_host_has_the_same_http_secret(host):
    def secret(h) -> str:
        line = h.check_output("grep ^REGISTRY_HTTP_SECRET= /opt/registry-cache/registry.env")
        return hashlib.sha256(line.encode()).hexdigest()

    assert secret(host) == secret(HOST_B)


def test_only_the_janitor_host_sweeps(host):
    assert host.service("registry-janitor.timer").is_enabled
    assert host.service("registry-janitor.timer").is_running
    for timer in ("registry-janitor.timer", "registry-janitor-verify.timer"):
        assert not HOST_B.service(timer).is_enabled
        assert not HOST_B.service(timer).is_running
    refused = HOST_B.run("registry-cache-sweep --dry-run")
    assert refused.rc == 1
    assert "janitor_host is registry-cache-s3-a" in refused.stderr
    assert HOST_B.run("registry-cache-verify --dry-run").rc == 1


def test_push_through_one_host_pull_through_the_other(host):
    push_random_image(host, "s3/hello:1")
    pull_completely(HOST_B, "s3/hello:1")
    push_random_image(HOST_B, "s3/hello:2")
    pull_completely(host, "s3/hello:2")
    # Host B answers a layer GET with a redirect into the bucket, host A serves the bytes.
    manifest = json.loads(
        sh(
            host,
            "curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "
            f"http://{REGISTRY}/v2/s3/hello/manifests/1",
        )
    )
    layer = manifest["layers"][0]["digest"]
    url = f"http://{REGISTRY}/v2/s3/hello/blobs/{layer}"
    fmt = "-o /dev/null -w '%{http_code} %{redirect_url}'"
    assert sh(host, f"curl -sS {fmt} {url}").split()[0] == "200"
    code_b, location = sh(HOST_B, f"curl -sS {fmt} {url}").split()
    assert code_b == "307" and location.startswith("http://172.30.98.10:7480/"), location
    assert sh(HOST_B, f"curl -fsSL {url} | sha256sum").split()[0] == layer.removeprefix("sha256:")


def test_an_upload_started_on_one_host_finishes_on_the_other(host):
    """POST on A, PATCH and PUT on B: B reads A's upload state (signed with http.secret)."""
    data = os.urandom(40000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    write = (
        'python3 -c \'import sys; open("/var/tmp/chunk", "wb").write(bytes.fromhex(sys.argv[1]))\' '
    )
    sh(HOST_B, write + data.hex())
    started = sh(
        host, f"curl -fsS -D - -o /dev/null -X POST http://{REGISTRY}/v2/s3/split/blobs/uploads/"
    )
    location = re.search(r"(?im)^location: *(\S+)", started).group(1)
    path = re.sub(r"^https?://[^/]+", "", location)
    patched = sh(
        HOST_B,
        "curl -fsS -D - -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' "
        f"--data-binary @/var/tmp/chunk 'http://{REGISTRY}{path}'",
    )
    assert patched.startswith("HTTP/1.1 202"), patched
    path = re.sub(r"^https?://[^/]+", "", re.search(r"(?im)^location: *(\S+)", patched).group(1))
    sep = "&" if "?" in path else "?"
    put = sh(
        HOST_B,
        f"curl -fsS -o /dev/null -w '%{{http_code}}' -X PUT 'http://{REGISTRY}{path}{sep}digest={digest}'",
    )
    assert put == "201"
    for h in (host, HOST_B):
        got = sh(h, f"curl -fsSL http://{REGISTRY}/v2/s3/split/blobs/{digest} | sha256sum")
        assert "sha256:" + got.split()[0] == digest


def test_sweeps_on_the_janitor_host_while_both_hosts_take_pushes(host):
    """The janitor scenario's push load through both hosts (the same repositories and tag
    names, so the hosts also overwrite each other's tags) while host A sweeps with a 20 s
    grace: garbage is collected from the bucket during the load, no push is refused, every
    push whose manifest is still there pulls completely, and every kept tag pulls through the
    other host. A manifest may be gone by policy: its tag pruned and its revision unreachable
    for REVISION_GRACE (20 s, the link's age counts at a first sighting); one gone sooner
    would be a lost push."""
    hosts = {"a": host, "b": HOST_B}
    for h in hosts.values():
        sh(h, f"rm -rf {WORK} && mkdir -p {WORK}")
        sh(
            h,
            "systemd-run --quiet --unit=molecule-pushload --collect "
            f"python3 {LOAD} {OUT} {STOP} --repos 4 --max-seconds {LOAD_SECONDS}",
        )
    figures = {name: {"checked": 0, "gone_by_policy": 0} for name in hosts}
    too_young, broken, reclaimed, sweeps = [], [], 0, 0

    def check_all() -> None:
        for name, h in hosts.items():
            check_started = time.time()
            summary = json.loads(sh(h, f"python3 {LOAD} --check {OUT} {STATE}").splitlines()[-1])
            ended = {
                rec["ref"]: rec["end"]
                for rec in map(json.loads, sh(h, f"cat {OUT}").splitlines())
                if rec["ok"]
            }
            figures[name]["checked"] += summary["checked"]
            figures[name]["gone_by_policy"] += len(summary["lost"])
            figures[name].update(pushes=summary["pushes"], refused=summary["refused"])
            too_young.extend(
                (name, ref, round(check_started - ended[ref], 1))
                for ref in summary["lost"]
                if ended[ref] > check_started - REVISION_GRACE_S
            )
            broken.extend((name, b) for b in summary["broken"])

    try:
        time.sleep(10)
        while sweeps < 3 or any(
            h.run("systemctl is-active --quiet molecule-pushload").rc == 0 for h in hosts.values()
        ):
            log = sweep_by_service(host)
            sweeps += 1
            reclaimed += sum(int(n) for n in RECLAIMED.findall(log))
            check_all()
    finally:
        for h in hosts.values():
            sh(h, f"touch {STOP}")
    check_all()
    kept = []
    for r in range(4):
        tags = json.loads(sh(host, f"curl -fsS http://{REGISTRY}/v2/load/r{r}/tags/list"))
        kept += [f"load/r{r}:{tag}" for tag in tags.get("tags") or []]
    for ref in kept:
        pull_completely(HOST_B, ref)
    print(json.dumps({"sweeps": sweeps, "blobs_reclaimed": reclaimed, "kept_tags": len(kept),
                      "hosts": figures}))  # fmt: skip
    assert not broken, broken
    assert not too_young, too_young
    for name, f in figures.items():
        assert f["pushes"] > 20, (name, f)
        assert f["refused"] == 0, (name, f)
        assert f["checked"] == f["pushes"], (name, f)
    assert kept, "no tag kept"
    assert reclaimed > 0, "the sweeps collected nothing"


def test_one_host_down_the_other_serves(host):
    sh(HOST_B, "systemctl stop registry-cache.service")
    try:
        assert HOST_B.run(f"curl -s -m 5 http://{REGISTRY}/v2/").rc != 0
        push_random_image(host, "s3/down:1")
        pull_completely(host, "s3/down:1")
        pull_completely(host, "s3/hello:2")
    finally:
        sh(HOST_B, "systemctl start registry-cache.service")
    pull_completely(HOST_B, "s3/down:1")


def test_the_registry_does_not_start_without_the_bucket(host):
    cursor = journal_cursor(HOST_B)
    GATEWAY.run("/usr/local/sbin/molecule-gateway stop-rgw")
    try:
        restarted = HOST_B.run("systemctl restart registry-cache.service")
        assert restarted.rc != 0
        log = unit_journal(HOST_B, "registry-cache.service", after_cursor=cursor)
        assert f"the bucket does not answer (s3://{BUCKET}/registry" in log, log[-3000:]
        assert HOST_B.run(f"curl -s -m 5 http://{REGISTRY}/v2/").rc != 0
    finally:
        sh(GATEWAY, "/usr/local/sbin/molecule-gateway start-rgw")
    # Restart= tries again every 30 s: the registry comes back with the bucket on its own.
    wait_for_registry(HOST_B, seconds=90)
    pull_completely(HOST_B, "s3/hello:1")
