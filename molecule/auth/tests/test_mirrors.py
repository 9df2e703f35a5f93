"""Pull-through mirrors (registry_mirrors) beside the push registry, checked inside the host.

molecule.yml configures two mirrors on registry-cache-auth; prepare.yml starts their
upstreams on that host at 192.0.2.1 (an address on lo that leads nowhere else):
  hub     port 5002 -> https://192.0.2.1:5101, Docker Hub's stand-in: HTTPS with the test CA
          (the mirror's ca_certificate), token auth whose token server wants the account's
          password; the mirror itself without authentication (auth: false), the inner
          dockerd's registry-mirrors points at it, metrics on 127.0.0.1:5092.
  public  port 5001 -> http://192.0.2.1:5100, anonymous, served like the push registry:
          TLS and the htpasswd users.
Images are built with the docker CLI and seeded into the upstreams with skopeo; clients are
the docker CLI, skopeo, curl and containerd's ctr. The tests share the mirrors and run in
file order; they restart, sweep and reconfigure the registry test_auth.py uses, so the two
files take turns. Passwords are only here base64-encoded (see test_auth.py for why).
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
from registry_cache_testing import (
    age_links,
    controller_tool,
    journal_cursor,
    one_file_at_a_time,
    sh,
    sweep_by_service,
    unit_journal,
)

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-auth")

PROJECT = "/opt/registry-cache"
COMPOSE = f"docker compose -p registry-cache -f {PROJECT}/compose.yml"
CA = "/usr/local/share/molecule-auth-ca.crt"
PUSH_DATA = "/var/lib/registry-cache/data"
MIRRORS = "/var/lib/registry-cache/mirrors"
PORTS = {"public": 5001, "hub": 5002}
METRICS_PORT = 5092
UPSTREAM_PUBLIC = "192.0.2.1:5100"
HUB_SEED = "127.0.0.1:5103"
WORK = "/var/tmp/molecule-mirrors"
DOCKER_CONFIG = f"{WORK}/docker-config"
AUTHFILE = f"{DOCKER_CONFIG}/config.json"
# The puller's password (registry_auth_users), base64-encoded.
PULLER_B64 = "bW9sZWN1bGUtYXV0aC1UYjJ4UjZtUC1wdWxsZXItbm90LXJlYWw="
# molecule.yml's hub password, base64-encoded.
HUB_PASSWORD_B64 = "bW9sZWN1bGUtbWlycm9yLUp4NyRxICNoJ3ViICJ4IjogXG5vdC1yZWFs"


def hub_password_forms_b64() -> dict[str, str]:
    """The hub password in the forms it could take on the host, each base64-encoded: as it
    is, as the role writes it into the env file (a JSON string), as an HTTP basic credential."""
    pw = base64.b64decode(HUB_PASSWORD_B64).decode()
    forms = {
        "pw": pw,
        "json": json.dumps(pw).replace("'", "\\u0027"),
        "basic": base64.b64encode(f"molecule-upstream:{pw}".encode()).decode(),
    }
    return {form: base64.b64encode(value.encode()).decode() for form, value in forms.items()}


def v2(mirror: str) -> str:
    return f"{MIRRORS}/{mirror}/docker/registry/v2"


def docker(host, script: str, *, check: bool = True):
    """Docker CLI commands with this file's login state (DOCKER_CONFIG)."""
    result = host.run(f"export DOCKER_CONFIG={DOCKER_CONFIG}; mkdir -p {DOCKER_CONFIG}; {script}")
    if check:
        assert result.rc == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result


def login_public(host) -> None:
    docker(
        host,
        f"echo {PULLER_B64} | base64 -d | docker login -u puller --password-stdin "
        f"127.0.0.1:{PORTS['public']} >/dev/null",
    )


def http_status(host, url: str, options: str = "", stdin: str = "true") -> str:
    """The HTTP status of a curl request made inside the host, TLS verified with the CA;
    `stdin` is a shell command whose output curl reads as its config (-K -)."""
    return sh(
        host,
        f"{stdin} | curl -sS --cacert {CA} -K - {options} -o /dev/null -w '%{{http_code}}' '{url}'",
    ).strip()


def image_id(host, ref: str) -> str:
    return sh(host, f"docker image inspect --format '{{{{.Id}}}}' {ref}").strip()


def skopeo_pull(host, ref: str, *, auth: bool):
    """A complete pull (every blob fetched, digests verified), TLS verified with the CA."""
    registry = ref.split("/", 1)[0]
    dest = f"{WORK}/pull"
    creds = f"--authfile {AUTHFILE}" if auth else "--src-no-creds"
    return host.run(
        f"rm -rf {dest} && skopeo --insecure-policy copy -q {creds} "
        f"--src-cert-dir /etc/docker/certs.d/{registry} docker://{ref} dir:{dest}; "
        f"rc=$?; rm -rf {dest}; exit $rc"
    )


def health(host, service: str) -> str:
    cid = sh(host, f"{COMPOSE} ps -q {service}").strip()
    if not cid:
        return "missing"
    return sh(host, f"docker inspect --format '{{{{.State.Health.Status}}}}' {cid}").strip()


def wait_for(predicate, seconds: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.5)
    return time.monotonic() - start


def blob_files(host, mirror: str) -> list[str]:
    out = sh(host, f"find {v2(mirror)}/blobs -name data -type f 2>/dev/null; true")
    return sorted(out.split())


@pytest.fixture(scope="module", autouse=True)
def _auth_host_to_this_file():
    with one_file_at_a_time("registry-cache-auth"):
        yield


@pytest.fixture(scope="module")
def images(host):
    """Images built here and seeded into the upstreams: {name: (reference, image id)}."""
    sh(host, f"mkdir -p {WORK}")
    seeded = {}
    for name, upstream, repo in (
        ("base1", UPSTREAM_PUBLIC, "team/base:1"),
        ("base2", UPSTREAM_PUBLIC, "team/base:2"),
        ("base3", UPSTREAM_PUBLIC, "team/base:3"),
        ("never", UPSTREAM_PUBLIC, "team/never:1"),
        ("hello", HUB_SEED, "molecule/hello:1"),
        ("ctr", HUB_SEED, "molecule/ctr:1"),
    ):
        local = f"molecule-mirror-seed/{name}:1"
        sh(
            host,
            f"""set -eu
ctx=$(mktemp -d)
head -c 65536 /dev/urandom > "$ctx/unique.bin"
printf 'FROM scratch\\nCOPY unique.bin /unique.bin\\n' > "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t {local} "$ctx" >/dev/null
rm -rf "$ctx"
skopeo --insecure-policy copy -q --dest-tls-verify=false docker-daemon:{local} \
    docker://{upstream}/{repo}
""",
        )
        seeded[name] = (repo, image_id(host, local))
        sh(host, f"docker image rm {local} >/dev/null")
    return seeded


# --- what the role deployed ---------------------------------------------------------------


def test_mirror_files(host):
    for mirror in PORTS:
        config = host.file(f"{PROJECT}/mirrors/{mirror}/config.yml")
        assert config.mode == 0o644
        env = host.file(f"{PROJECT}/mirrors/{mirror}/registry.env")
        assert (env.mode, env.user, env.group) == (0o600, "root", "root")
        assert "REGISTRY_HTTP_SECRET=" in env.content_string
    public = host.file(f"{PROJECT}/mirrors/public/config.yml").content_string
    assert "remoteurl: http://192.0.2.1:5100" in public
    assert "path: /etc/docker/registry/auth/htpasswd" in public
    assert "certificate: /etc/docker/registry/tls/registry.crt" in public
    assert (
        "REGISTRY_PROXY_" not in host.file(f"{PROJECT}/mirrors/public/registry.env").content_string
    )
    hub = host.file(f"{PROJECT}/mirrors/hub/config.yml").content_string
    assert "remoteurl: https://192.0.2.1:5101" in hub
    assert "htpasswd" not in hub  # auth: false
    assert "certificate: /etc/docker/registry/tls/registry.crt" in hub
    assert "prometheus:" in hub and "prometheus:" not in public
    # The expiry deletes through the storage API: without delete enabled it would fail.
    assert re.search(r"delete:\n\s+enabled: true", hub)
    assert host.file(f"{PROJECT}/mirrors/hub/ca/upstream-ca.crt").exists
    assert not host.file(f"{PROJECT}/mirrors/public/ca").exists
    # The account travels in the env file only.
    assert "molecule-upstream" in host.file(f"{PROJECT}/mirrors/hub/registry.env").content_string
    assert "molecule-upstream" not in hub
    assert "REGISTRY_PROXY" not in host.file(f"{PROJECT}/compose.yml").content_string


def test_the_unit_guards_every_store_and_the_janitor_sees_only_the_push_store(host):
    # (systemd adds the units' working directory, the project directory.)
    unit = sh(host, "systemctl show registry-cache.service -p RequiresMountsFor --value").split()
    assert {PUSH_DATA, f"{MIRRORS}/hub", f"{MIRRORS}/public"} <= set(unit), unit
    janitor = sh(host, "systemctl show registry-janitor.service -p RequiresMountsFor --value")
    assert PUSH_DATA in janitor.split()
    assert not [path for path in janitor.split() if path.startswith(MIRRORS)], janitor
    assert MIRRORS not in host.file("/usr/local/sbin/registry-cache-sweep").content_string
    compose = json.loads(sh(host, f"{COMPOSE} --profile janitor config --format json"))
    sources = [v["source"] for v in compose["services"]["janitor"]["volumes"]]
    assert PUSH_DATA in sources
    assert not [s for s in sources if s.startswith(MIRRORS)], sources
    # Each mirror has its own store, and no service but the mirror mounts it.
    for mirror in PORTS:
        mounting = [
            name
            for name, service in compose["services"].items()
            for volume in service.get("volumes", [])
            if volume["source"] == f"{MIRRORS}/{mirror}"
        ]
        assert mounting == [f"mirror-{mirror}"]


def test_the_firewall_admits_the_mirror_ports_and_not_the_metrics_port(host):
    with host.sudo():
        rules = sh(host, "nft list table inet registry_cache")
    for port in PORTS.values():
        assert re.search(rf"tcp dport {port} ip saddr \{{ 10\.0\.0\.0/8, 172\.16\.0\.0/12", rules)
        assert re.search(rf"ct original proto-dst {port} ip saddr \{{ 10\.0\.0\.0/8", rules)
    assert str(METRICS_PORT) not in rules
    cid = sh(host, f"{COMPOSE} ps -q mirror-hub").strip()
    assert sh(host, f"docker port {cid} 5001").split() == [f"127.0.0.1:{METRICS_PORT}"]


def test_every_service_is_healthy(host):
    for service in ("registry", "mirror-public", "mirror-hub"):
        assert health(host, service) == "healthy", service


# --- pulling through a mirror -------------------------------------------------------------


def test_the_public_mirror_wants_the_registry_users(host):
    url = f"https://127.0.0.1:{PORTS['public']}/v2/"
    assert http_status(host, url) == "401"
    config = f'pw=$(echo {PULLER_B64} | base64 -d); printf \'user = "puller:%s"\\n\' "$pw"'
    assert http_status(host, url, stdin=config) == "200"


def test_pull_through_the_public_mirror_with_the_docker_cli_and_skopeo(host, images):
    repo, built = images["base1"]
    ref = f"127.0.0.1:{PORTS['public']}/{repo}"
    login_public(host)
    docker(host, f"docker pull -q {ref} >/dev/null")
    assert image_id(host, ref) == built
    result = skopeo_pull(host, ref, auth=True)
    assert result.rc == 0, result.stderr
    assert host.file(f"{v2('public')}/repositories/team/base/_manifests/tags/1").exists


def test_the_second_pull_is_served_with_the_upstream_stopped(host, images):
    repo, built = images["base1"]
    ref = f"127.0.0.1:{PORTS['public']}/{repo}"
    # The mirror stores a blob in the background while it streams it to the first client.
    wait_for(lambda: len(blob_files(host, "public")) >= 3, 30, "layers stored in the mirror")
    sh(host, "systemctl stop molecule-upstream-public.service")
    try:
        docker(host, f"docker image rm {ref} >/dev/null && docker pull -q {ref} >/dev/null")
        assert image_id(host, ref) == built
        result = skopeo_pull(host, ref, auth=True)
        assert result.rc == 0, result.stderr
        # The upstream really is gone: what the mirror never fetched cannot be pulled.
        never = docker(
            host, f"docker pull 127.0.0.1:{PORTS['public']}/{images['never'][0]}", check=False
        )
        assert never.rc != 0
    finally:
        sh(host, "systemctl start molecule-upstream-public.service")


def test_a_push_to_a_mirror_is_refused(host, images):
    repo, _ = images["base1"]
    port = PORTS["hub"]  # no authentication: the refusal is the proxy's, not a login's
    result = host.run(
        f"skopeo --insecure-policy copy -q --src-authfile {AUTHFILE} "
        f"--src-cert-dir /etc/docker/certs.d/127.0.0.1:{PORTS['public']} "
        f"--dest-cert-dir /etc/docker/certs.d/127.0.0.1:{port} "
        f"docker://127.0.0.1:{PORTS['public']}/{repo} docker://127.0.0.1:{port}/team/pushed:1"
    )
    assert result.rc != 0
    assert "unsupported" in result.stderr, result.stderr
    upload = sh(
        host,
        f"curl -sS --cacert {CA} -X POST -w ' %{{http_code}}' "
        f"https://127.0.0.1:{port}/v2/team/pushed/blobs/uploads/",
    )
    assert upload.endswith(" 405") and '"code":"UNSUPPORTED"' in upload, upload
    # storage.delete is on for the expiry, and still no client can delete.
    digest = "sha256:" + "0" * 64
    url = f"https://127.0.0.1:{port}/v2/molecule/hello/manifests/{digest}"
    assert http_status(host, url, "-X DELETE") == "405"
    assert not host.file(f"{v2('hub')}/repositories/team/pushed").exists


def test_dockerd_registry_mirrors_pull_docker_hub_names_through_the_hub_mirror(host, images):
    repo, built = images["hello"]
    cursor = journal_cursor(host)
    # daemon.json's registry-mirrors (molecule.yml: docker_daemon_options). Without the
    # mirror dockerd would go to registry-1.docker.io, which cannot be reached from here.
    docker(host, f"docker pull -q {repo} >/dev/null")
    assert image_id(host, f"docker.io/{repo}") == built
    assert host.file(f"{v2('hub')}/repositories/molecule/hello/_manifests/tags/1").exists
    # The mirror got its tokens with the account's password (the token server knows only
    # its hash and answers 401 to anything else).
    tokens = unit_journal(host, "molecule-token-server.service", after_cursor=cursor)
    assert re.search(r'"GET /token\?account=molecule-upstream&\S+ HTTP/1.1" 200', tokens), tokens
    assert " 401 " not in tokens, tokens


def test_the_hub_upstream_refuses_requests_without_the_account(host, images):
    """So the pull above needed the password the role gave the mirror."""
    repo, _ = images["hello"]
    name, tag = repo.split(":")
    assert http_status(host, f"https://192.0.2.1:5101/v2/{name}/manifests/{tag}") == "401"
    token = f"https://192.0.2.1:5102/token?service=molecule-upstream&scope=repository:{name}:pull"
    assert http_status(host, token) == "401"


def test_the_hub_mirror_serves_anonymous_clients(host, images):
    repo, _ = images["hello"]
    result = skopeo_pull(host, f"127.0.0.1:{PORTS['hub']}/{repo}", auth=False)
    assert result.rc == 0, result.stderr


def test_containerd_hosts_toml_pulls_through_the_mirrors(host, images):
    """The README's hosts.toml, for Docker Hub names and for another upstream."""
    hosts = f"{WORK}/certs.d"
    basic = f"$(echo {PULLER_B64} | base64 -d | sed 's/^/puller:/' | tr -d '\\n' | base64 -w0)"
    sh(
        host,
        f"""set -eu
mkdir -p {hosts}/docker.io {hosts}/{UPSTREAM_PUBLIC}
cat > {hosts}/docker.io/hosts.toml <<EOF
server = "https://registry-1.docker.io"

[host."https://127.0.0.1:{PORTS["hub"]}"]
  capabilities = ["pull", "resolve"]
  ca = "{CA}"
EOF
cat > {hosts}/{UPSTREAM_PUBLIC}/hosts.toml <<EOF
server = "http://{UPSTREAM_PUBLIC}"

[host."https://127.0.0.1:{PORTS["public"]}"]
  capabilities = ["pull", "resolve"]
  ca = "{CA}"
  [host."https://127.0.0.1:{PORTS["public"]}".header]
    authorization = "Basic {basic}"
EOF
""",
    )
    try:
        sh(host, f"ctr content fetch --hosts-dir {hosts} docker.io/{images['ctr'][0]} >/dev/null")
        sh(
            host,
            f"ctr content fetch --hosts-dir {hosts} {UPSTREAM_PUBLIC}/{images['base2'][0]} >/dev/null",
        )
    finally:
        sh(host, f"rm -rf {hosts}")
    # containerd names the registry it resolves for in an `ns` parameter: the mirrors saw
    # both requests.
    hub_log = sh(host, f"{COMPOSE} logs --no-color mirror-hub")
    assert re.search(
        r'"(HEAD|GET) /v2/molecule/ctr/manifests/1\?ns=docker\.io HTTP/1.1" 200 .*containerd/',
        hub_log,
    )
    public_log = sh(host, f"{COMPOSE} logs --no-color mirror-public")
    assert re.search(
        r'"(HEAD|GET) /v2/team/base/manifests/2\?ns=192\.0\.2\.1%3A5100 HTTP/1.1" 200 '
        r".*containerd/",
        public_log,
    )


def test_metrics_on_the_loopback_port(host, images):
    metrics = sh(host, f"curl -fsS http://127.0.0.1:{METRICS_PORT}/metrics")
    assert re.search(
        r'^registry_http_requests_total\{code="200",handler="manifest"', metrics, re.MULTILINE
    )
    proxy = json.loads(sh(host, f"curl -fsS http://127.0.0.1:{METRICS_PORT}/debug/vars"))
    counters = proxy["registry"]["proxy"]
    assert counters["manifests"]["Misses"] >= 1
    assert counters["blobs"]["Requests"] >= 1


# --- the proxy's expiry schedule ----------------------------------------------------------


def test_the_expiry_schedule_is_seven_days_from_the_fetch(host, images):
    state = f"{MIRRORS}/hub/scheduler-state.json"

    def entries():
        if not host.file(state).exists:
            return {}
        return json.loads(host.file(state).content_string)

    # Written every 5 s while there are new entries.
    wait_for(lambda: len(entries()) >= 6, 15, "scheduler-state.json with the pulled content")
    now = time.time()
    week = 7 * 24 * 3600
    for key, entry in entries().items():
        assert re.fullmatch(r"molecule/(hello|ctr)@sha256:[0-9a-f]{64}", key), key
        assert entry["EntryType"] in (0, 1)  # blob, manifest
        expiry = entry["ExpiryData"]
        stamp = calendar.timegm(time.strptime(expiry[:19], "%Y-%m-%dT%H:%M:%S"))
        assert now + week - 1800 < stamp < now + week + 60, (key, expiry)


def test_an_unparsable_schedule_is_moved_aside_and_the_mirror_starts(host, images):
    state = f"{MIRRORS}/hub/scheduler-state.json"
    sh(host, f"{COMPOSE} stop mirror-hub")
    # What a registry killed while rewriting it leaves behind: the start of the JSON.
    sh(host, f"head -c 100 {state} > {state}.tmp && mv {state}.tmp {state}")
    sh(host, f"{COMPOSE} start mirror-hub")
    wait_for(lambda: health(host, "mirror-hub") == "healthy", 60, "mirror-hub healthy")
    aside = sh(host, f"ls {MIRRORS}/hub/ | grep -c '^scheduler-state.json.corrupt-'; true")
    assert aside.strip() == "1"
    log = sh(host, f"{COMPOSE} logs --no-color mirror-hub")
    assert "mirror-start: /var/lib/registry/scheduler-state.json did not parse" in log
    # The cached content is still served.
    result = skopeo_pull(host, f"127.0.0.1:{PORTS['hub']}/{images['hello'][0]}", auth=False)
    assert result.rc == 0, result.stderr
    sh(host, f"rm -f {MIRRORS}/hub/scheduler-state.json.corrupt-*")


def test_a_missing_upstream_does_not_hold_back_the_push_registry(host):
    """A mirror cannot start without its upstream; the unit waits for the push registry only
    and the mirror follows once the upstream is back."""
    sh(host, "systemctl stop molecule-upstream-public.service")
    try:
        restart = host.run("systemctl restart registry-cache.service")
        assert restart.rc == 0, restart.stderr
        assert health(host, "registry") == "healthy"
        assert http_status(host, "https://127.0.0.1:5000/v2/") == "401"
        time.sleep(3)
        assert health(host, "mirror-public") != "healthy"
        log = sh(host, f"{COMPOSE} logs --no-color mirror-public")
        assert "192.0.2.1:5100" in log and "connection refused" in log, log[-2000:]
    finally:
        sh(host, "systemctl start molecule-upstream-public.service")
    waited = wait_for(
        lambda: health(host, "mirror-public") == "healthy", 120, "mirror-public back by itself"
    )
    print(f"mirror-public healthy {waited:.1f} s after its upstream came back")
    wait_for(lambda: health(host, "mirror-hub") == "healthy", 60, "mirror-hub healthy")


# --- the janitor and mirror stores --------------------------------------------------------


def test_a_sweep_never_touches_a_mirror_store(host, images):
    login_public(host)
    for name in ("base1", "base2", "base3"):
        docker(host, f"docker pull -q 127.0.0.1:{PORTS['public']}/{images[name][0]} >/dev/null")
    wait_for(lambda: len(blob_files(host, "public")) >= 7, 30, "layers stored in the mirror")
    # More tags than janitor_keep_last_n (2), two hours old: a sweep of this store would
    # delete one of them.
    age_links(host, 7200, f"{v2('public')}/repositories")
    listing = (
        f"cd {MIRRORS}/public && find docker -printf '%p %s %T@\\n' | sort; ls -a {MIRRORS}/public"
    )
    before = sh(host, listing)
    log = sweep_by_service(host)
    assert re.search(r"(sweep|prune) done", log), log
    assert sh(host, listing) == before
    tags = sh(host, f"ls {v2('public')}/repositories/team/base/_manifests/tags").split()
    assert sorted(tags) == ["1", "2", "3"]


def test_the_janitor_report_reads_a_mirror_store(host, images):
    out = sh(
        host,
        f"{COMPOSE} run --rm --no-deps -T -v {MIRRORS}/public:/var/lib/mirror:ro "
        "janitor registry-janitor report --data-dir /var/lib/mirror",
    )
    assert re.search(r"^team/base\s+3\s+\d+\s", out, re.MULTILINE), out


# --- the upstream password ----------------------------------------------------------------


def test_the_upstream_password_is_only_in_the_env_file_and_the_container(host, images):
    find = "".join(
        f"{form}=$(echo {encoded} | base64 -d); "
        for form, encoded in hub_password_forms_b64().items()
    )
    patterns = '-e "$pw" -e "$json" -e "$basic"'
    places = (
        "/etc /opt /root /home /tmp /var/tmp /var/log /var/lib/registry-cache /usr/local /run "
        "/var/lib/docker/containers"
    )
    with host.sudo():
        files = sh(host, f"{find}grep -rlF {patterns} {places} 2>/dev/null; true").split()
        assert files == [f"{PROJECT}/mirrors/hub/registry.env"], files
        journal = sh(host, f"{find}journalctl -o cat --no-pager | grep -cF {patterns}; true")
        assert journal.strip() == "0"
        processes = sh(
            host,
            f"{find}ps -eww -o args > /tmp/molecule-mirrors-ps; "
            f"grep -cF {patterns} /tmp/molecule-mirrors-ps; rm -f /tmp/molecule-mirrors-ps; true",
        )
        assert processes.strip() == "0"
        # Docker holds a container's environment (docker inspect, and JSON-escaped in
        # /var/lib/docker/containers/<id>/config.v2.json, root only): the mirror's alone.
        environments = sh(
            host,
            f"{find}for c in $(docker ps -aq); do "
            "docker inspect --format '{{.Name}}{{range .Config.Env}} {{.}}{{end}}' $c "
            f"| grep -F {patterns} | cut -d' ' -f1; done",
        )
        assert environments.split() == ["/registry-cache-mirror-hub-1"]


def registry_role(tmp_path: Path, *extra_args: str) -> subprocess.CompletedProcess[str]:
    """The registry role alone on this host, from the controller."""
    project = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
    playbook = tmp_path / "registry-only.yml"
    playbook.write_text(
        "- name: The registry role alone\n  hosts: registry_cache\n  become: true\n"
        "  gather_facts: false\n  roles:\n    - role: registry\n"
    )
    return subprocess.run(
        [controller_tool("ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "--limit", "registry-cache-auth", str(playbook), *extra_args],
        cwd=project, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(project / "roles"), "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def test_the_role_fails_naming_a_mirror_that_does_not_start(host, tmp_path):
    """The registry role alone with a mirror whose upstream does not answer: the run fails
    after registry_start_timeout, naming the mirror and quoting its log; the push registry
    keeps serving. Then the role with the inventory's mirrors again, for test_auth.py."""
    extra = tmp_path / "extra.json"
    public = {"name": "public", "remote_url": f"http://{UPSTREAM_PUBLIC}", "port": PORTS["public"]}
    # Its own loopback, where nothing listens: refused at once (a dropped connection would
    # make the start hang until TCP gives up).
    broken = {"name": "broken", "remote_url": "http://127.0.0.1:1", "port": 5003}
    extra.write_text(
        json.dumps(
            {
                "registry_mirrors": [public, broken],
                "registry_mirrors_data_dir": MIRRORS,
                "registry_start_timeout": 20,
            }
        )
    )
    try:
        result = registry_role(tmp_path, "-e", f"@{extra}")
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        failed = out.partition("HANDLER [registry : Fail when a mirror is not healthy]")[2]
        message = " ".join(failed.split())
        assert "registry_mirrors: mirror-broken not healthy after 20 s" in message, out[-3000:]
        errors = message.partition("Errors:")[2]
        assert "mirror-broken" in errors, message
        assert "127.0.0.1:1" in message and "connection refused" in message, message
        assert "mirror-public" not in message, message
        assert health(host, "registry") == "healthy"
        assert http_status(host, "https://127.0.0.1:5000/v2/") == "401"
    finally:
        restored = registry_role(tmp_path)
        assert restored.returncode == 0, (restored.stdout + restored.stderr)[-3000:]
    for service in ("registry", "mirror-public", "mirror-hub"):
        assert health(host, service) == "healthy", service
    assert sh(host, "docker ps -aq --filter name=registry-cache-mirror-broken") == ""


def test_cleanup(host):
    docker(host, f"docker logout 127.0.0.1:{PORTS['public']} >/dev/null 2>&1 || true")
    sh(host, f"rm -rf {WORK}")
