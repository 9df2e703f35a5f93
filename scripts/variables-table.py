#!/usr/bin/env python3
"""Writes the variables table of docs/configuration.md from the roles' meta/argument_specs.yml.

The argument specs are what Ansible validates before a role changes anything, so the
table generated from them cannot drift from what the roles accept.
  scripts/variables-table.py           rewrite the table in docs/configuration.md
  scripts/variables-table.py --check   exit 1 when docs/configuration.md is out of date (make lint)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

TOP = Path(__file__).resolve().parent.parent
TARGET = TOP / "docs" / "configuration.md"
ROLES = ["host", "docker", "storagebox", "registry", "janitor"]
BEGIN = "<!-- variables:begin (scripts/variables-table.py writes this table) -->"
END = "<!-- variables:end -->"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def default_of(name: str, spec: dict[str, object], defaults: dict[str, object]) -> str:
    if spec.get("required"):
        return "*required*"
    value = defaults.get(name, spec.get("default"))
    if value is None:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    if isinstance(value, (list, dict)):
        flow = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        return f"`{cell(flow)}`"
    return f"`{cell(str(value))}`"


def table() -> str:
    lines = [BEGIN, "", "| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for role in ROLES:
        specs = yaml.safe_load((TOP / "roles" / role / "meta" / "argument_specs.yml").read_text())
        defaults_file = TOP / "roles" / role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) or {}
        options = specs["argument_specs"]["main"].get("options", {})
        lines.append(f"| **role `{role}`** | | |")
        for name, spec in options.items():
            description = spec.get("description", "")
            if isinstance(description, list):
                description = " ".join(description)
            lines.append(
                f"| `{name}` | {default_of(name, spec, defaults)} | {cell(str(description))} |"
            )
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the table is stale")
    args = parser.parse_args()
    name = TARGET.relative_to(TOP)
    text = TARGET.read_text()
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        print(f"{name}: markers {BEGIN!r} ... {END!r} not found", file=sys.stderr)
        return 2
    new = head + table() + tail
    if args.check:
        if new != text:
            print(
                f"{name}: the variables table is stale: run scripts/variables-table.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
