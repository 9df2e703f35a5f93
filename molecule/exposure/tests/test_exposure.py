"""Who reaches the cache host: two clients on the test network, one allowed, one not.

The allowed client (172.30.99.10, fd30:99::10) is in registry_cache_allowed_cidrs, the
denied one (172.30.99.20, fd30:99::20) is not, but it is the admin address in host_ssh_allowed_cidrs. So each
client is let through on one port and stopped on the other: a failure to connect is the
firewall's doing, not a broken network. The registry port is published by the host's
Docker (DNAT, forward hook; over IPv6 its userland proxy, input hook); the SSH port is a
listener on the host itself (input hook).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import testinfra
import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-exposure")

CACHE_ADDRESS = "172.30.99.5"
CACHE_ADDRESS_V6 = "fd30:99::5"
REGISTRY_PORT = 5000
SSH_PORT = 22
ALLOWED = "registry-cache-exposure-allowed"
DENIED = "registry-cache-exposure-denied"
# A denied connection is dropped: the client sees a timeout, so a probe expected to be
# dropped waits 3 s. A probe expected to be answered waits up to 30 s: allowed ones answer in
# milliseconds, but with five scenarios on two cores a converge beside it can stall one for
# seconds, and a slow answer is still an answer.
DROPPED_WAIT_S = 3
ANSWERED_WAIT_S = 30

# Runs on a client: GET http://<cache>:<port><path>; prints the status code, "timeout",
# "refused" or the error's name. python3 is all the test image has.
PROBE = r"""
import socket, sys, urllib.error, urllib.request
url, timeout = sys.argv[1], float(sys.argv[2])
try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except urllib.error.URLError as error:
    reason = error.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
        print("timeout")
    elif isinstance(reason, ConnectionRefusedError):
        print("refused")
    else:
        print(type(reason).__name__, reason)
except (TimeoutError, socket.timeout):
    print("timeout")
except ConnectionError as error:
    print(type(error).__name__)
"""


def probe(
    client: str, port: int, path: str = "/", address: str = CACHE_ADDRESS, answered: bool = True
) -> str:
    """What `client` gets for http://<cache host>:<port><path>; `answered` says which the
    caller expects, an answer or a dropped connection, and so how long to wait."""
    host = testinfra.get_host(f"docker://{client}")
    url = f"http://{f'[{address}]' if ':' in address else address}:{port}{path}"
    wait = ANSWERED_WAIT_S if answered else DROPPED_WAIT_S
    result = host.run("python3 -c %s %s %s", PROBE, url, str(wait))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def wait_for_registry(host, seconds: int = 120) -> None:
    """Until the registry answers on the host's loopback (after restarts)."""
    deadline = time.monotonic() + seconds
    while True:
        result = host.run("curl -fsS -m 5 -o /dev/null http://127.0.0.1:%s/v2/", str(REGISTRY_PORT))
        if result.rc == 0:
            return
        assert time.monotonic() < deadline, f"registry not back after {seconds} s: {result.stderr}"
        time.sleep(2)


def wait_until_true(check, seconds: int = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not true after {seconds} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def ssh_listener(host) -> Iterator[None]:
    """A stand-in for sshd on the SSH port (the test image has no sshd): a Python HTTP
    server, so the clients probe it the same way as the registry."""
    host.run("systemctl stop exposure-ssh-listener.service")
    host.run("systemctl reset-failed exposure-ssh-listener.service")
    started = host.run(
        "systemd-run --unit=exposure-ssh-listener --property=RuntimeDirectory=%s "
        "python3 -m http.server --directory /run/%s --bind 0.0.0.0 %s",
        "exposure-ssh-listener",
        "exposure-ssh-listener",
        str(SSH_PORT),
    )
    assert started.rc == 0, started.stderr
    wait_until_true(
        lambda: host.run("curl -fsS -m 2 -o /dev/null http://127.0.0.1:%s/", str(SSH_PORT)).rc == 0
    )
    yield
    host.run("systemctl stop exposure-ssh-listener.service")


def assert_policy() -> None:
    """The whole policy, seen from both clients."""
    outcomes = {
        "allowed client -> registry": probe(ALLOWED, REGISTRY_PORT, "/v2/"),
        "denied client -> registry": probe(DENIED, REGISTRY_PORT, "/v2/", answered=False),
        "allowed client -> registry over IPv6": probe(
            ALLOWED, REGISTRY_PORT, "/v2/", CACHE_ADDRESS_V6
        ),
        "denied client -> registry over IPv6": probe(
            DENIED, REGISTRY_PORT, "/v2/", CACHE_ADDRESS_V6, answered=False
        ),
        "admin client -> ssh port": probe(DENIED, SSH_PORT),
        "non-admin client -> ssh port": probe(ALLOWED, SSH_PORT, answered=False),
    }
    assert outcomes == {
        "allowed client -> registry": "200",
        "denied client -> registry": "timeout",
        "allowed client -> registry over IPv6": "200",
        "denied client -> registry over IPv6": "timeout",
        "admin client -> ssh port": "200",
        "non-admin client -> ssh port": "timeout",
    }


def docker_tables(host) -> set[str]:
    tables = json.loads(host.check_output("nft -j list tables"))["nftables"]
    return {f"{t['table']['family']} {t['table']['name']}" for t in tables if "table" in t}


def test_registry_is_published_through_dnat(host):
    """The registry port is Docker's DNAT, not a host listener: the case the input chain
    alone would not cover."""
    rules = host.check_output("iptables-save -t nat")
    assert f"--dport {REGISTRY_PORT} -j DNAT" in rules


def test_ruleset_is_our_own_table(host):
    conf = host.file("/etc/nftables.conf").content_string.splitlines()
    commands = [line.strip() for line in conf if not line.lstrip().startswith("#")]
    assert not [line for line in commands if "flush" in line]
    ours = host.check_output("nft list table inet registry_cache")
    assert "policy drop" in ours
    assert "ct original proto-dst 5000" in ours
    assert "fd30:99::10" in ours  # IPv6 entries land in the same table
    assert {"inet registry_cache", "ip nat", "ip filter"} <= docker_tables(host)


def test_policy_after_converge(host, ssh_listener):
    assert_policy()


def test_input_chain_alone_does_not_stop_published_ports(host, ssh_listener):
    """Control: without the forward chain the denied client reaches the registry (Docker's
    DNAT skips the input chain); a reload of nftables puts the rules back."""
    host.check_output("nft flush chain inet registry_cache forward")
    try:
        assert probe(DENIED, REGISTRY_PORT, "/v2/") == "200"
    finally:
        host.check_output("systemctl reload nftables.service")
    assert probe(DENIED, REGISTRY_PORT, "/v2/", answered=False) == "timeout"


def test_policy_after_docker_restart(host, ssh_listener):
    host.check_output("systemctl restart docker.service")
    wait_for_registry(host)
    assert "inet registry_cache" in docker_tables(host)
    assert_policy()


def test_policy_after_registry_restart(host, ssh_listener):
    """A new registry container (maybe a new address): the rules do not name addresses."""
    host.check_output("systemctl restart registry-cache.service")
    wait_for_registry(host)
    assert_policy()


@pytest.mark.parametrize("action", ["reload", "restart"])
def test_policy_after_nftables(host, ssh_listener, action):
    """Reloading or restarting nftables replaces our table and leaves Docker's alone: the
    allowed client still gets through Docker's DNAT."""
    before = docker_tables(host)
    host.check_output(f"systemctl {action} nftables.service")
    assert host.service("nftables.service").is_running
    assert docker_tables(host) == before
    assert_policy()


def test_stopping_nftables_keeps_docker_rules(host, ssh_listener):
    """Debian's unit would `nft flush ruleset` on stop; ours removes only our table."""
    host.check_output("systemctl stop nftables.service")
    try:
        tables = docker_tables(host)
        assert "inet registry_cache" not in tables
        assert {"ip nat", "ip filter"} <= tables
        assert probe(ALLOWED, REGISTRY_PORT, "/v2/") == "200"
        # Firewall off: the denied client gets in (so the checks above can fail).
        assert probe(DENIED, REGISTRY_PORT, "/v2/") == "200"
        assert probe(DENIED, REGISTRY_PORT, "/v2/", CACHE_ADDRESS_V6) == "200"
    finally:
        host.check_output("systemctl start nftables.service")
    assert_policy()


def run_playbook(playbook: str, extra_vars: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """ansible-playbook from the project against this scenario's inventory."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=os.path.join(project, "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    command = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        "-i",
        os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]),
        "--limit",
        "registry-cache-exposure",
        "-e",
        json.dumps(extra_vars),
        playbook,
    ]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"registry_cache_allowed_cidrs": ["10.0.0.0/33"]}, "Malformed CIDR"),
        ({"host_ssh_allowed_cidrs": ["172.30.99.20", "not-a-cidr"]}, "Malformed CIDR"),
        (
            {"host_firewall_open_ports": [{"port": 9100, "cidrs": ["10.0.0.1/8"]}]},
            "has host bits set",
        ),
        (
            {"host_firewall_open_ports": [{"port": "ssh", "cidrs": ["10.0.0.0/8"]}]},
            "host_firewall_open_ports",
        ),
        ({"host_ssh_allowed_cidrs": []}, "would close SSH for everyone"),
        # Ansible run from an SSH session whose address the admin list does not hold.
        (
            {"ansible_docker_extra_env": {"SSH_CONNECTION": "203.0.113.9 50022 172.30.99.5 22"}},
            "lock this session",
        ),
        # From an admin address, but sshd listens on another port than the firewall opens.
        (
            {"ansible_docker_extra_env": {"SSH_CONNECTION": "172.30.99.20 50022 172.30.99.5 2222"}},
            "lock this session",
        ),
    ],
    ids=[
        "cidr-33",
        "not-a-cidr",
        "host-bits",
        "port-not-int",
        "no-admins",
        "ssh-client",
        "ssh-port",
    ],
)
def test_site_refuses_bad_firewall_settings_before_changing_the_host(host, extra_vars, message):
    rules = "/etc/nftables.d/registry-cache.nft"
    before = host.file(rules).sha256sum
    result = run_playbook("site.yml", extra_vars)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # The callback wraps (and may colour) long messages: compare plain words.
    words = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", output).split())
    assert message in words, output
    assert "changed=0" in output and "changed=1" not in output, output
    assert host.file(rules).sha256sum == before


def test_site_accepts_an_admin_ssh_session():
    """The guard lets an SSH session from an admin address on the opened port through."""
    session = {"SSH_CONNECTION": "172.30.99.20 50022 172.30.99.5 22"}
    result = run_playbook("playbooks/preflight.yml", {"ansible_docker_extra_env": session})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Assert the firewall admits this SSH connection" in result.stdout
