#!/usr/bin/python3
"""Ansible module: the registry's htpasswd file with bcrypt hashes, written idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_htpasswd
short_description: Writes an htpasswd file of bcrypt hashes for the Distribution registry
description:
  - Distribution's htpasswd access controller only accepts bcrypt hashes.
  - bcrypt salts are random, so hashing again on every run would change the file (and
    restart the registry) each time. A user's existing hash is kept while the password still
    verifies against it and its cost is the configured one; otherwise it is hashed anew.
  - The file lists exactly the given users, in the given order; others are removed.
  - Runs on the managed host and needs python3-bcrypt there. In check mode without it, the
    module reports a change instead of failing (the package is not installed yet).
options:
  path:
    description: The htpasswd file.
    type: path
    required: true
  users:
    description: The users, each with name and password (plain text, never logged).
    type: list
    elements: dict
    required: true
  cost:
    description: bcrypt cost (log2 of the rounds), 4-31.
    type: int
    default: 8
extends_documentation_fragment: [files]
"""

RETURN = r"""
users_added: {description: Names of users that were not in the file before., type: list}
users_updated: {description: Names of users whose hash was replaced., type: list}
users_removed: {description: Names of users removed from the file., type: list}
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule  # type: ignore[import-untyped]

BCRYPT_MAX_BYTES = 72


def read_entries(path: str) -> tuple[str | None, dict[str, str]]:
    """The file's text and its name -> hash entries (None when there is no file)."""
    if not os.path.exists(path):
        return None, {}
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    entries = {}
    for line in text.splitlines():
        name, sep, hashed = line.partition(":")
        if sep and name:
            entries[name] = hashed.strip()
    return text, entries


def hash_cost(hashed: str) -> int | None:
    """The cost field of a $2a$/$2b$/$2y$ bcrypt hash, None for anything else."""
    parts = hashed.split("$")
    if len(parts) != 4 or parts[1] not in ("2a", "2b", "2y") or not parts[2].isdigit():
        return None
    return int(parts[2])


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "users": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "name": {"type": "str", "required": True},
                    "password": {"type": "str", "required": True, "no_log": True},
                },
            },
            "cost": {"type": "int", "default": 8},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    users = module.params["users"]
    cost = module.params["cost"]
    if not 4 <= cost <= 31:
        module.fail_json(msg=f"cost must be 4-31, not {cost}")
    names = [user["name"] for user in users]
    for user in users:
        name = user["name"]
        if not name or ":" in name or any(c.isspace() for c in name):
            module.fail_json(msg=f"invalid user name {name!r}: empty, ':' or whitespace")
        if not user["password"]:
            module.fail_json(msg=f"user {name}: empty password")
        if len(user["password"].encode("utf-8")) > BCRYPT_MAX_BYTES:
            module.fail_json(msg=f"user {name}: password longer than 72 bytes (bcrypt limit)")
    if len(set(names)) != len(names):
        module.fail_json(msg="user names must be unique")

    old_text, old = read_entries(path)
    removed = [name for name in old if name not in names]
    try:
        # Only needed (and installed) when users are configured.
        import bcrypt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        if module.check_mode:
            module.exit_json(changed=True, msg="python3-bcrypt is not installed yet")
        module.fail_json(msg="python3-bcrypt is required on the host")

    added: list[str] = []
    updated: list[str] = []
    lines: list[str] = []
    for user in users:
        name, password = user["name"], user["password"].encode("utf-8")
        hashed = old.get(name)
        keep = (
            hashed is not None
            and hash_cost(hashed) == cost
            and bcrypt.checkpw(password, hashed.encode("ascii"))
        )
        if not keep:
            (updated if hashed is not None else added).append(name)
            hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode("ascii")
        lines.append(f"{name}:{hashed}\n")
    new_text = "".join(lines)

    changed = new_text != old_text
    if changed and not module.check_mode:
        directory = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".htpasswd.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(new_text)
        module.atomic_move(tmp, path)
    file_args = module.load_file_common_arguments(module.params)
    if os.path.exists(path):
        changed = module.set_fs_attributes_if_different(file_args, changed)
    result = {
        "changed": changed,
        "path": path,
        "users_added": added,
        "users_updated": updated,
        "users_removed": removed,
    }
    if module._diff:  # the documented way to ask for --diff
        # Names only: the hashes are nobody's business in a diff.
        result["diff"] = {
            "before": "".join(f"{name}\n" for name in old),
            "after": "".join(f"{name}\n" for name in names),
            "before_header": f"{path} (users)",
            "after_header": f"{path} (users)",
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
