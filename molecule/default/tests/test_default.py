"""Outcomes a user of the cache host cares about, checked inside the converged host."""

import base64
import json
import os

import testinfra.utils.ansible_runner
from registry_cache_testing import push_scratch_image

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-default")

PASSWORD = "molecule-Zq8vW3xK-not-a-real-password"
# Commands run through Ansible are logged to the journal with their arguments: the checks
# that search for the password get it base64-encoded, so they do not plant it themselves.
PASSWORD_B64 = base64.b64encode(PASSWORD.encode()).decode()
FIND_PASSWORD = f"pw=$(echo {PASSWORD_B64} | base64 -d); "
CREDENTIALS = "/etc/storagebox-storagebox.cred"
COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"


def test_registry_cache_service_is_active(host):
    service = host.service("registry-cache.service")
    assert service.is_enabled
    assert service.is_running  # active (exited) for a oneshot with RemainAfterExit
    unit = host.run("systemctl show registry-cache.service -p RequiresMountsFor")
    assert "/var/lib/registry-cache/data" in unit.stdout


def test_registry_answers_v2_on_port_5000(host):
    result = host.run("curl -fsS -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/v2/")
    assert result.rc == 0, result.stderr
    assert result.stdout == "200"


def test_registry_container_is_healthy(host):
    cid = host.check_output(f"{COMPOSE} ps -q registry")
    health = host.check_output(f"docker inspect --format '{{{{.State.Health.Status}}}}' {cid}")
    assert health == "healthy"


def test_push_and_pull_through_the_registry(host):
    image = "127.0.0.1:5000/molecule/hello:v1"
    script = f"""
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "hello from molecule $(date +%s%N)" > "$dir/hello.txt"
printf 'FROM scratch\\nCOPY hello.txt /hello.txt\\n' > "$dir/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t {image} "$dir" >/dev/null
built=$(docker image inspect --format '{{{{.Id}}}}' {image})
docker push -q {image} >/dev/null
docker image rm {image} >/dev/null
docker pull -q {image} >/dev/null
pulled=$(docker image inspect --format '{{{{.Id}}}}' {image})
test "$built" = "$pulled"
cid=$(docker create {image} /none)
docker cp "$cid:/hello.txt" - | tar -xO hello.txt | grep -q "hello from molecule"
docker rm "$cid" >/dev/null
"""
    result = host.run(script)
    assert result.rc == 0, result.stdout + result.stderr
    tags = json.loads(
        host.check_output("curl -fsS http://127.0.0.1:5000/v2/molecule/hello/tags/list")
    )
    assert tags == {"name": "molecule/hello", "tags": ["v1"]}


def test_janitor_timer_is_scheduled(host):
    timer = host.service("registry-janitor.timer")
    assert timer.is_enabled
    assert timer.is_running
    nxt = host.check_output(
        "systemctl show registry-janitor.timer -p NextElapseUSecRealtime --value"
    )
    assert nxt.strip() not in ("", "n/a", "0")


def test_janitor_service_runs_a_sweep(host):
    result = host.run("systemctl start registry-janitor.service")
    assert result.rc == 0, host.run(
        "journalctl -u registry-janitor.service -n 50 --no-pager"
    ).stdout
    state = host.check_output("systemctl show registry-janitor.service -p Result --value")
    assert state == "success"


def test_janitor_settings_reach_the_container(host):
    env = host.file("/opt/registry-cache/janitor.env").content_string
    assert "KEEP_LAST_N='5'" in env
    assert "PROTECT_TAGS='latest|v[0-9].*'" in env
    policy = host.file("/opt/registry-cache/janitor/policy.toml").content_string
    assert 'match = "molecule/**"' in policy
    assert "keep_last_n = 3" in policy


def test_fstab_entry(host):
    lines = [
        line.split()
        for line in host.file("/etc/fstab").content_string.splitlines()
        if line.strip() and not line.startswith("#") and " /mnt/storagebox " in f" {line} "
    ]
    assert len(lines) == 1
    src, path, fstype, opts = lines[0][:4]
    assert src == "//u000000.your-storagebox.de/backup"
    assert path == "/mnt/storagebox"
    assert fstype == "cifs"
    options = opts.split(",")
    for expected in (
        f"credentials={CREDENTIALS}",
        "vers=3.1.1",
        "seal",
        "iocharset=utf8",
        "_netdev",
        "nofail",
        "uid=10000",
        "gid=10000",
    ):
        assert expected in options
    assert not any(o.startswith(("password=", "username=", "user=")) for o in options)


def test_credentials_file_is_root_only(host):
    cred = host.file(CREDENTIALS)
    assert cred.is_file
    assert cred.user == "root"
    assert cred.group == "root"
    assert cred.mode == 0o600
    assert f"password={PASSWORD}" in cred.content_string
    assert "username=u000000" in cred.content_string


def test_password_appears_nowhere_else(host):
    with host.sudo():
        files = host.run(
            FIND_PASSWORD + 'grep -rlF -- "$pw" /etc /opt/registry-cache /var/lib/registry-cache '
            "/root /var/log /var/tmp /tmp 2>/dev/null"
        ).stdout.split()
        # The binary journal files are searched through journalctl below.
        assert [f for f in files if not f.startswith("/var/log/journal/")] == [CREDENTIALS]
        journal = host.run(FIND_PASSWORD + 'journalctl --no-pager -o cat | grep -cF -- "$pw"')
        assert journal.stdout.strip() == "0"
        inspect = host.run(FIND_PASSWORD + 'docker inspect $(docker ps -aq) | grep -cF -- "$pw"')
        assert inspect.stdout.strip() == "0"


def test_password_is_in_no_process_list_during_a_sweep(host):
    # Samples every process's arguments (ps -eo args, /proc/*/cmdline) and environment
    # while a sweep runs, and matches inside bash: a grep would carry the password in its
    # own arguments.
    script = (
        FIND_PASSWORD
        + """
systemctl start --no-block registry-janitor.service
state() { systemctl show -p ActiveState --value registry-janitor.service; }
samples=0 hits=0 seen=0 sweeping=0
# A oneshot service is "activating" while its command runs.
while [ $samples -lt 10 ] || [ "$(state)" = activating ]; do
    [ "$(state)" = activating ] && sweeping=$((sweeping + 1))
    snapshot=$(ps -eo args; for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do
        { tr '\\0' ' ' < "$f"; } 2>/dev/null; echo; done)
    case "$snapshot" in *"$pw"*) hits=$((hits + 1));; esac
    n=$(ls -d /proc/[0-9]* 2>/dev/null | wc -l)
    [ "$n" -gt "$seen" ] && seen=$n
    samples=$((samples + 1))
    [ $samples -lt 600 ] || break
    sleep 0.2
done
echo "$samples $sweeping $seen $hits"
"""
    )
    with host.sudo():
        samples, sweeping, seen, hits = map(int, host.check_output(script).split())
    assert sweeping > 0, "no sample was taken while the sweep ran"
    assert seen > 10
    assert hits == 0, f"the password was in a process list in {hits} of {samples} samples"
    state = host.check_output("systemctl show registry-janitor.service -p Result --value")
    assert state == "success"


def test_config_drift_is_restored_and_registry_restarted(host):
    config = host.file("/opt/registry-cache/config.yml").content_string
    assert "molecule drift marker" not in config
    assert "blobdescriptor:" not in config
    before = host.file("/var/tmp/molecule-registry-started-at").content_string.strip()
    cid = host.check_output(f"{COMPOSE} ps -q registry")
    after = host.check_output(f"docker inspect --format '{{{{.State.StartedAt}}}}' {cid}")
    assert before and after > before  # RFC 3339 in UTC sorts as text


REPO = os.environ.get(
    "MOLECULE_PROJECT_DIRECTORY", os.path.join(os.path.dirname(__file__), "..", "..", "..")
)
METRICS_FILE = "/var/lib/registry-cache/metrics/registry_janitor.prom"


def test_anonymous_deletes_are_refused(host):
    # registry_delete_enabled is off by default: the janitor works on the storage directly.
    push_scratch_image(host, "127.0.0.1:5000/molecule/nodelete:v1")
    accept = "-H 'Accept: application/vnd.docker.distribution.manifest.v2+json'"
    base = "http://127.0.0.1:5000/v2/molecule/nodelete"
    manifest = json.loads(host.check_output(f"curl -fsS {accept} {base}/manifests/v1"))
    digest = host.check_output(
        f"curl -fsS -o /dev/null -D - {accept} {base}/manifests/v1"
        " | tr -d '\\r' | sed -n 's/^docker-content-digest: //Ip'"
    )
    assert digest.startswith("sha256:"), digest
    layer = manifest["layers"][0]["digest"]
    for path in (f"manifests/{digest}", f"blobs/{layer}"):
        result = host.run(f"curl -sS -o - -w '\\n%{{http_code}}' -X DELETE {base}/{path}")
        body, _, code = result.stdout.rpartition("\n")
        assert code == "405", f"DELETE {path}: {code} {body}"
        assert "UNSUPPORTED" in body, body
    # Still there and whole.
    assert host.run(f"curl -fsS -o /dev/null {accept} {base}/manifests/v1").rc == 0
    assert host.run(f"curl -fsS -o /dev/null {base}/blobs/{layer}").rc == 0


def test_metrics_are_readable_by_other_users(host):
    # node_exporter's textfile collector runs as its own user.
    if not host.file(METRICS_FILE).exists:
        host.check_output("systemctl start registry-janitor.service")
    assert host.file("/var/lib/registry-cache").mode == 0o755
    metrics_dir = host.file("/var/lib/registry-cache/metrics")
    assert metrics_dir.mode == 0o755
    assert metrics_dir.user == "registry-cache"
    assert host.file(METRICS_FILE).mode == 0o644
    text = host.check_output(f"runuser -u nobody -- cat {METRICS_FILE}")
    assert "registry_janitor_" in text


def test_the_registry_uid_has_a_name(host):
    # Check mode resolves the owner of the role's files (no "failed to look up user").
    assert host.check_output("getent passwd 10000").startswith("registry-cache:")
    assert host.check_output("getent group 10000").startswith("registry-cache:")


def test_the_image_is_built_from_the_root_dockerfile(host):
    with open(os.path.join(REPO, "Dockerfile"), encoding="utf-8") as handle:
        root_dockerfile = handle.read()
    assert host.file("/opt/registry-cache/build/Dockerfile").content_string == root_dockerfile
    cid = host.check_output(f"{COMPOSE} ps -q registry")
    image = host.check_output(f"docker inspect --format '{{{{.Image}}}}' {cid}")
    user = host.check_output(f"docker image inspect --format '{{{{.Config.User}}}}' {image}")
    assert user == "10000:10000"
    with open(
        os.path.join(REPO, "files/janitor/src/registry_janitor/__init__.py"), encoding="utf-8"
    ) as handle:
        version = handle.read().split('__version__ = "', 1)[1].split('"', 1)[0]
    label = host.check_output(
        "docker image inspect --format"
        f" '{{{{index .Config.Labels \"org.opencontainers.image.version\"}}}}' {image}"
    )
    assert label == version
