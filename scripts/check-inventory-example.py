#!/usr/bin/env python3
"""Checks the production inventory example against the roles' meta/argument_specs.yml.

inventories/production/group_vars/registry_cache/main.yml lists every variable of every
role, set or commented (`# name: default`). This fails (exit 1) when a variable of an
argument spec is missing there, when the example names a variable no spec has, when one is
listed twice, or when a commented value differs from the role's default (a commented line
claims to be the default).
  scripts/check-inventory-example.py            the check (make lint)
  scripts/check-inventory-example.py --missing  print the missing ones as commented defaults
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

TOP = Path(__file__).resolve().parent.parent
EXAMPLE = TOP / "inventories" / "production" / "group_vars" / "registry_cache" / "main.yml"
ROLES = ["host", "docker", "storagebox", "registry", "janitor"]
# A variable at the top level, set (`name: value`) or commented out (`# name: value`).
ENTRY = re.compile(r"^(?P<comment># ?)?(?P<name>[a-z][a-z0-9_]*):(?P<value>(?: .*)?)$")
# A commented value's continuation: `#   - item` or `#   key: value` (indented).
CONTINUATION = re.compile(r"^#(?P<rest>  +\S.*)$")


def specs() -> dict[str, tuple[str, dict[str, object], object]]:
    """Every variable: its role, its spec and its default (defaults/main.yml over the spec)."""
    out: dict[str, tuple[str, dict[str, object], object]] = {}
    for role in ROLES:
        spec = yaml.safe_load((TOP / "roles" / role / "meta" / "argument_specs.yml").read_text())
        defaults = yaml.safe_load((TOP / "roles" / role / "defaults" / "main.yml").read_text())
        for name, option in spec["argument_specs"]["main"].get("options", {}).items():
            default = (defaults or {}).get(name, option.get("default"))
            out[name] = (role, option, default)
    return out


def entries(text: str) -> list[tuple[int, str, bool, str]]:
    """(line number, name, commented, `name: value` with the value's continuation lines)."""
    lines = text.splitlines()
    found: list[tuple[int, str, bool, str]] = []
    for number, line in enumerate(lines, 1):
        match = ENTRY.match(line)
        if not match:
            continue
        commented = match["comment"] is not None
        block: list[str] = []
        if commented:
            for following in lines[number:]:
                more = CONTINUATION.match(following)
                if not more:
                    break
                block.append(more["rest"])
        value = "\n".join([f"{match['name']}:{match['value']}", *block])
        found.append((number, match["name"], commented, value))
    return found


def commented_default(name: str, default: object) -> str:
    flow = str(yaml.safe_dump({name: default}, default_flow_style=None, width=10_000)).strip()
    return "# " + flow.replace("\n", "\n# ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", action="store_true", help="print missing variables")
    args = parser.parse_args()
    known = specs()
    where = EXAMPLE.relative_to(TOP)
    errors: list[str] = []
    seen: dict[str, int] = {}
    for number, name, commented, value in entries(EXAMPLE.read_text()):
        if name not in known:
            errors.append(f"{where}:{number}: {name} is no variable of any role's argument spec")
            continue
        if name in seen:
            errors.append(f"{where}:{number}: {name} listed again (first on line {seen[name]})")
            continue
        seen[name] = number
        role, option, default = known[name]
        if not commented or option.get("required"):
            continue
        try:
            shown = yaml.safe_load(value)[name]
        except yaml.YAMLError as error:
            errors.append(f"{where}:{number}: {name}: the commented value is not YAML: {error}")
            continue
        if shown != default and not (shown is None and default in ("", [], {})):
            errors.append(
                f"{where}:{number}: {name}: commented {shown!r}, but role {role}'s default"
                f" is {default!r}"
            )
    missing = [name for name in known if name not in seen]
    for name in missing:
        errors.append(f"{where}: {name} (role {known[name][0]}) is missing")
    if args.missing:
        for name in missing:
            print(commented_default(name, known[name][2]))
        return 0
    for message in errors:
        print(message, file=sys.stderr)
    if errors:
        return 1
    print(f"{where}: all {len(known)} variables of the {len(ROLES)} roles, defaults as the roles'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
