"""Optional authentication and TLS, checked inside the converged host.

The registry serves HTTPS with a certificate from the throwaway CA of prepare.yml and asks
for one of two htpasswd users. Real clients inside the host: curl, the docker CLI (CA in
/etc/docker/certs.d/127.0.0.1:5000/) and skopeo (same directory, TLS verified). The tests
share one registry and run in file order.

The passwords are here base64-encoded only: commands run on the host are logged to its
journal with their arguments, so a command decodes them into a shell variable and hands
them to clients on stdin or in a config read from stdin, never as an argument.
"""

from __future__ import annotations

import base64
import json
import os
import re
import statistics
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
from registry_cache_testing import age_links, blob_data, one_file_at_a_time, sh, sweep_by_service

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-auth")

REG = "127.0.0.1:5000"
URL = f"https://{REG}"
CA = "/usr/local/share/molecule-auth-ca.crt"
CERTS_D = f"/etc/docker/certs.d/{REG}"
PROJECT = "/opt/registry-cache"
DATA = "/var/lib/registry-cache/data"
V2 = f"{DATA}/docker/registry/v2"
WORK = "/var/tmp/molecule-auth"
# Docker CLI login state and skopeo's auth file (the same format); removed at the end.
DOCKER_CONFIG = f"{WORK}/docker-config"
AUTHFILE = f"{DOCKER_CONFIG}/config.json"
COMPOSE = f"docker compose -p registry-cache -f {PROJECT}/compose.yml"

# molecule.yml's registry_auth_users (host registry-cache-auth), base64-encoded.
USERS = {
    "ci": "bW9sZWN1bGUtYXV0aC1IcTRuVjhzTC1jaS1ub3QtcmVhbA==",
    "puller": "bW9sZWN1bGUtYXV0aC1UYjJ4UjZtUC1wdWxsZXItbm90LXJlYWw=",
}
UNIQUE_SIZE = 128 * 1024
# Request timing figures, on the controller.
TIMING = Path(__file__).resolve().parents[3] / ".cache" / "molecule-auth-request-timing.json"


# test_mirrors.py restarts, sweeps and reconfigures the same registry: the two files take
# turns.
@pytest.fixture(scope="module", autouse=True)
def _auth_host_to_this_file():
    with one_file_at_a_time("registry-cache-auth"):
        yield


def password_var(user: str) -> str:
    """Shell that puts the user's password into $pw without naming it."""
    return f"pw=$(echo {USERS[user]} | base64 -d); "


def curl(host, path: str, *, user: str | None = None, extra: str = ""):
    """(status, headers, body) of a request made inside the host, TLS verified with the test
    CA; the credentials (if any) in a curl config read from stdin."""
    config = "true"
    if user:
        config = f'{password_var(user)}printf \'user = "%s:%s"\\n\' {user} "$pw"'
    out = sh(
        host,
        f"{config} | curl -sS --cacert {CA} {extra} -K - -D /tmp/molecule-auth-headers "
        f"-o /tmp/molecule-auth-body -w '%{{http_code}}' '{URL}{path}'",
    )
    headers = host.file("/tmp/molecule-auth-headers").content_string
    body = host.file("/tmp/molecule-auth-body").content_string
    host.run("rm -f /tmp/molecule-auth-headers /tmp/molecule-auth-body")
    return int(out.strip()), headers, body


def docker(host, script: str, *, check: bool = True):
    """Docker CLI commands with this test's login state (DOCKER_CONFIG)."""
    result = host.run(f"export DOCKER_CONFIG={DOCKER_CONFIG}; mkdir -p {DOCKER_CONFIG}; {script}")
    if check:
        assert result.rc == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result


def login(host, user: str) -> None:
    docker(
        host,
        f"{password_var(user)}printf '%s' \"$pw\" | "
        f"docker login -u {user} --password-stdin {REG} >/dev/null",
    )


def build(host, image: str, shared: str = "base") -> None:
    """An image FROM scratch with a shared and a random file, built with the docker CLI."""
    sh(
        host,
        f"""set -eu
mkdir -p {WORK}
shared={WORK}/shared-{shared}.bin
test -s "$shared" || head -c 65536 /dev/urandom > "$shared"
ctx=$(mktemp -d)
cp "$shared" "$ctx/shared.bin"
head -c {UNIQUE_SIZE} /dev/urandom > "$ctx/unique.bin"
printf 'FROM scratch\\nCOPY shared.bin /shared.bin\\nCOPY unique.bin /unique.bin\\n' \
    > "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t {image} "$ctx" >/dev/null
rm -rf "$ctx"
""",
    )


def skopeo_pull(host, ref: str, *, authenticated: bool = True):
    """A complete pull with skopeo (every blob fetched, digests verified), TLS verified with
    the CA from certs.d."""
    dest = f"{WORK}/pull/{re.sub(r'[^A-Za-z0-9]', '_', ref)}"
    auth = f"--authfile {AUTHFILE}" if authenticated else "--src-no-creds"
    result = host.run(
        f"rm -rf {dest} && mkdir -p {dest} && skopeo --insecure-policy copy -q {auth} "
        f"--src-cert-dir {CERTS_D} docker://{REG}/{ref} dir:{dest}"
    )
    host.run(f"rm -rf {dest}")
    return result


def manifest(host, repo: str, tag: str) -> dict:
    status, _, body = curl(
        host,
        f"/v2/{repo}/manifests/{tag}",
        user="puller",
        extra="-H 'Accept: application/vnd.docker.distribution.manifest.v2+json'",
    )
    assert status == 200, body
    return json.loads(body)


def tags(host, repo: str) -> list[str]:
    status, _, body = curl(host, f"/v2/{repo}/tags/list", user="puller")
    assert status == 200, body
    return sorted(json.loads(body).get("tags") or [])


# --- the deployed configuration -----------------------------------------------------------


def test_files_on_the_host(host):
    htpasswd = host.file(f"{PROJECT}/auth/htpasswd")
    assert htpasswd.mode == 0o600 and htpasswd.uid == 10000 and htpasswd.gid == 10000
    lines = htpasswd.content_string.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["ci", "puller"]
    for line in lines:
        assert re.fullmatch(r"[a-z]+:\$2b\$08\$[./A-Za-z0-9]{53}", line), line
    key = host.file(f"{PROJECT}/tls/registry.key")
    assert key.mode == 0o600 and key.uid == 10000
    assert host.file(f"{PROJECT}/tls/registry.crt").mode == 0o644
    config = host.file(f"{PROJECT}/config.yml").content_string
    assert "htpasswd:" in config and "path: /etc/docker/registry/auth/htpasswd" in config
    assert "certificate: /etc/docker/registry/tls/registry.crt" in config


def test_registry_container_is_healthy(host):
    """The health check counts a 401 over https as up."""
    assert host.service("registry-cache.service").is_running
    cid = host.check_output(f"{COMPOSE} ps -q registry")
    health = host.check_output(f"docker inspect --format '{{{{.State.Health.Status}}}}' {cid}")
    assert health == "healthy"


# --- TLS ----------------------------------------------------------------------------------


def test_anonymous_v2_is_401_with_a_basic_challenge(host):
    status, headers, _ = curl(host, "/v2/")
    assert status == 401
    assert re.search(r'(?im)^www-authenticate: basic realm="registry-cache"', headers), headers


def test_certificate_is_the_provided_one(host):
    # Verified against the test CA, for the name 127.0.0.1 ...
    status, _, _ = curl(host, "/v2/")
    assert status == 401
    # ... and not trusted without it (so it is TLS with that certificate, not something else).
    result = host.run(f"curl -sS -o /dev/null https://{REG}/v2/")
    assert result.rc == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION
    served = sh(
        host,
        f"openssl s_client -connect {REG} -servername localhost </dev/null 2>/dev/null "
        "| openssl x509 -noout -fingerprint -sha256",
    )
    deployed = sh(host, f"openssl x509 -noout -fingerprint -sha256 -in {PROJECT}/tls/registry.crt")
    assert served == deployed


def test_plain_http_to_the_tls_port_fails(host):
    result = host.run(f"curl -sS -o /dev/null -w '%{{http_code}}' http://{REG}/v2/")
    # Go's TLS server answers a plain HTTP request with 400 and nothing of the registry.
    assert result.stdout != "200" and result.stdout != "401", result.stdout
    body = host.run(f"curl -sS http://{REG}/v2/").stdout
    assert "HTTP request to an HTTPS server" in body, body


# --- authentication -----------------------------------------------------------------------


def test_wrong_password_is_401(host):
    out = sh(
        host,
        f"printf 'user = \"ci:not-the-password\"\\n' | curl -sS --cacert {CA} -K - "
        f"-o /dev/null -w '%{{http_code}}' {URL}/v2/",
    )
    assert out.strip() == "401"


def test_both_users_are_accepted(host):
    for user in USERS:
        status, _, body = curl(host, "/v2/", user=user)
        assert status == 200, (user, body)


def test_anonymous_push_is_refused(host):
    image = f"{REG}/team/anon:v1"
    build(host, image)
    docker(host, f"docker logout {REG} >/dev/null 2>&1 || true")
    result = docker(host, f"docker push {image}", check=False)
    assert result.rc != 0
    assert re.search(
        r"no basic auth credentials|unauthorized|authentication required",
        result.stderr + result.stdout,
        re.IGNORECASE,
    ), result.stderr
    # skopeo without credentials, TLS verified: refused for lack of authentication.
    result = host.run(
        f"skopeo --insecure-policy copy -q --dest-no-creds --dest-cert-dir {CERTS_D} "
        f"docker-daemon:{image} docker://{image}"
    )
    assert result.rc != 0
    assert re.search(r"authentication required|unauthorized", result.stderr, re.IGNORECASE), (
        result.stderr
    )
    # Nothing of it reached the store.
    assert not host.file(f"{V2}/repositories/team/anon").exists


def test_authenticated_push_and_pull_with_the_docker_cli(host):
    image = f"{REG}/team/hello:v1"
    build(host, image)
    login(host, "ci")
    docker(
        host,
        f"""set -eu
built=$(docker image inspect --format '{{{{.Id}}}}' {image})
docker push -q {image} >/dev/null
docker image rm {image} >/dev/null
docker pull -q {image} >/dev/null
test "$built" = "$(docker image inspect --format '{{{{.Id}}}}' {image})"
""",
    )
    assert tags(host, "team/hello") == ["v1"]
    # The pull works anonymous-free only: without login the same pull is refused.
    docker(host, f"docker logout {REG} >/dev/null && docker image rm {image} >/dev/null")
    result = docker(host, f"docker pull {image}", check=False)
    assert result.rc != 0
    assert re.search(
        r"no basic auth credentials|unauthorized|authentication required",
        result.stderr,
        re.IGNORECASE,
    ), result.stderr


def test_authenticated_skopeo_copy_and_complete_pull_with_tls_verified(host):
    login(host, "puller")
    result = host.run(
        f"skopeo --insecure-policy copy -q --authfile {AUTHFILE} --src-cert-dir {CERTS_D} "
        f"--dest-cert-dir {CERTS_D} docker://{REG}/team/hello:v1 docker://{REG}/team/copy:v1"
    )
    assert result.rc == 0, result.stderr
    assert skopeo_pull(host, "team/copy:v1").rc == 0
    anonymous = skopeo_pull(host, "team/copy:v1", authenticated=False)
    assert anonymous.rc != 0
    assert re.search(r"authentication required|unauthorized", anonymous.stderr, re.IGNORECASE)


# --- the janitor --------------------------------------------------------------------------


def test_janitor_sweep_deletes_beyond_n_and_kept_images_pull(host):
    repo = "team/app"
    login(host, "ci")
    infos = {}
    for name in ("a1", "a2", "a3", "a4"):
        image = f"{REG}/{repo}:{name}"
        build(host, image)
        docker(host, f"docker push -q {image} >/dev/null")
        info = manifest(host, repo, name)
        infos[name] = [info["config"]["digest"], info["layers"][1]["digest"]]
        host.run("sleep 1.1")
    assert tags(host, repo) == ["a1", "a2", "a3", "a4"]
    # Three hours back: older than the janitor's grace for unreachable revisions.
    age_links(host, 3 * 3600, f"{V2}/repositories/{repo}")

    log = sweep_by_service(host)
    assert re.search(r"(sweep|prune) done: \d+ repositories, \d+ tags kept, 2 deleted", log), log
    # garbage-collect parsed the config with its auth and TLS sections and collected.
    assert re.search(r"gc done.*: [1-9]\d* blobs", log), log

    assert tags(host, repo) == ["a3", "a4"]
    for gone in ("a1", "a2"):
        # garbage-collect ran (with the auth and TLS sections in its config): blobs gone.
        for digest in infos[gone]:
            assert not host.file(blob_data(V2, digest)).exists, f"{gone}: {digest} left"
        assert skopeo_pull(host, f"{repo}:{gone}").rc != 0
    for kept in ("a3", "a4"):
        for digest in infos[kept]:
            assert host.file(blob_data(V2, digest)).exists
        result = skopeo_pull(host, f"{repo}:{kept}")
        assert result.rc == 0, result.stderr
    # The earlier images are untouched (fewer than N tags).
    assert skopeo_pull(host, "team/hello:v1").rc == 0
    assert host.service("registry-cache.service").is_running


# --- what authentication costs per request ------------------------------------------------


def test_request_time_with_and_without_authentication(host):
    """Figures for the docs (written to TIMING on the controller): the registry checks the
    bcrypt hash on every request. 20 GET /v2/ each, new TLS connection every time."""
    runs = 20
    anonymous = sh(
        host,
        f"for i in $(seq {runs}); do curl -s --cacert {CA} -o /dev/null "
        f"-w '%{{http_code}} %{{time_total}}\\n' {URL}/v2/; done",
    ).split()
    authenticated = sh(
        host,
        f"{password_var('ci')}for i in $(seq {runs}); do "
        f'printf \'user = "%s:%s"\\n\' ci "$pw" | curl -s --cacert {CA} -K - -o /dev/null '
        f"-w '%{{http_code}} %{{time_total}}\\n' {URL}/v2/; done",
    ).split()
    assert anonymous[0::2] == ["401"] * runs
    assert authenticated[0::2] == ["200"] * runs
    median_anonymous = statistics.median(float(t) for t in anonymous[1::2])
    median_authenticated = statistics.median(float(t) for t in authenticated[1::2])
    TIMING.parent.mkdir(parents=True, exist_ok=True)
    TIMING.write_text(
        json.dumps(
            {
                "requests": runs,
                "bcrypt_cost": int(
                    host.file(f"{PROJECT}/auth/htpasswd").content_string.split("$")[2]
                ),
                "median_s_anonymous_401": median_anonymous,
                "median_s_authenticated_200": median_authenticated,
            },
            indent=2,
        )
        + "\n"
    )


# --- the passwords appear nowhere but in the variables ------------------------------------


def test_passwords_appear_nowhere_on_the_host(host):
    docker(host, f"docker logout {REG} >/dev/null 2>&1 || true; rm -rf {DOCKER_CONFIG}")
    for user, encoded in USERS.items():
        # The plain password, and base64 "user:password" (a docker/skopeo auth entry).
        basic = base64.b64encode(f"{user}:{base64.b64decode(encoded).decode()}".encode()).decode()
        find = f"{password_var(user)}basic={basic}; "
        places = (
            "/etc /opt /root /home /tmp /var/tmp /var/log /var/lib/registry-cache /usr/local "
            "/run /var/lib/docker/containers"
        )
        files = host.run(f'{find}grep -rlF -e "$pw" -e "$basic" {places} 2>/dev/null; true').stdout
        assert files.strip() == "", f"{user}: found in {files}"
        journal = host.run(
            f'{find}journalctl -o cat --no-pager | grep -cF -e "$pw" -e "$basic"; true'
        ).stdout
        assert journal.strip() == "0", f"{user}: {journal.strip()} journal lines"
        # ps writes to a file first: a grep in the same pipeline would list itself.
        processes = host.run(
            f"{find}ps -eww -o args > /tmp/molecule-auth-ps; "
            'grep -cF -e "$pw" /tmp/molecule-auth-ps; rm -f /tmp/molecule-auth-ps; true'
        ).stdout
        assert processes.strip() == "0", f"{user}: in the process list"
        inspect = host.run(
            f'{find}docker inspect $(docker ps -aq) | grep -cF -e "$pw" -e "$basic"; true'
        ).stdout
        assert inspect.strip() == "0", f"{user}: in docker inspect"
