"""Bad authentication and TLS settings are refused before the role changes the host.

The registry role alone, applied from the controller with each bad setting as extra vars:
the run fails in the argument spec validation or the role's assert, nothing changed, and a
password given in the bad setting is not printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from registry_cache_testing import controller_tool

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
CERT = "/var/tmp/registry-cache-molecule/auth/tls/registry.crt"
KEY = "/var/tmp/registry-cache-molecule/auth/tls/registry.key"
SECRET = "bad-input-Vw3kP9sQ-not-real"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

ARGSPEC = "Validating arguments against arg spec 'main' - The registry Compose project"
ASSERT = "Assert the authentication and TLS settings are usable"

# case: (extra vars, the task that must refuse it, what its error says, whitespace-normalised)
BAD = {
    "certificate without key": (
        {"registry_tls_certificate": CERT, "registry_tls_key": ""},
        ASSERT,
        "(registry_tls_certificate | length > 0) == (registry_tls_key | length > 0)",
    ),
    "key without certificate": (
        {"registry_tls_certificate": "", "registry_tls_key": KEY},
        ASSERT,
        "(registry_tls_certificate | length > 0) == (registry_tls_key | length > 0)",
    ),
    "certificate file missing": (
        {"registry_tls_certificate": "/nonexistent/registry.crt", "registry_tls_key": KEY},
        ASSERT,
        "registry_tls_certificate is file",
    ),
    "colon in a user name": (
        {"registry_auth_users": [{"name": "ci:x", "password": SECRET}]},
        ASSERT,
        "map(attribute='name') | reject('match'",
    ),
    "space in a user name": (
        {"registry_auth_users": [{"name": "c i", "password": SECRET}]},
        ASSERT,
        "map(attribute='name') | reject('match'",
    ),
    "duplicate user": (
        {
            "registry_auth_users": [
                {"name": "ci", "password": SECRET},
                {"name": "ci", "password": SECRET + "2"},
            ]
        },
        ASSERT,
        "map(attribute='name') | unique",
    ),
    "empty password": (
        {"registry_auth_users": [{"name": "ci", "password": ""}]},
        ASSERT,
        "select('lt', 1)",
    ),
    "password over 72 bytes": (
        {"registry_auth_users": [{"name": "ci", "password": SECRET * 3}]},
        ASSERT,
        "select('gt', 72)",
    ),
    "user without password": (
        {"registry_auth_users": [{"name": "ci"}]},
        ARGSPEC,
        "password",
    ),
    "password not a string": (
        {"registry_auth_users": [{"name": "ci", "password": {"secret": SECRET}}]},
        ASSERT,
        "map(attribute='password') | reject('string')",
    ),
    "user name a number": (
        {"registry_auth_users": [{"name": 7, "password": SECRET}]},
        ASSERT,
        "map(attribute='name') | reject('string')",
    ),
    "bcrypt cost 3": ({"registry_auth_bcrypt_cost": 3}, ASSERT, "registry_auth_bcrypt_cost >= 4"),
}

PLAYBOOK = """\
- name: The registry role alone
  hosts: registry_cache
  become: true
  gather_facts: false
  roles:
    - role: registry
"""


@pytest.fixture(scope="module")
def playbook(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad-input") / "registry-only.yml"
    path.write_text(PLAYBOOK)
    return path


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_setting_is_refused_before_any_change(case, playbook, tmp_path):
    settings, task, error = BAD[case]
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(settings))
    result = subprocess.run(
        [
            controller_tool("ansible-playbook"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit",
            "registry-cache-auth",
            str(playbook),
            "-e",
            f"@{extra}",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            **os.environ,
            "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
        },
    )
    out = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode != 0, out
    assert "fatal:" in out, out
    before, _, after = out.partition("fatal:")
    assert re.findall(r"TASK \[registry : ([^\n]*?)\] \**$", before, re.MULTILINE)[-1] == task, out
    assert error in " ".join(after.split()), out
    assert re.search(r"\bchanged=0\s", out), out
    assert SECRET not in out, f"password printed: {out}"
