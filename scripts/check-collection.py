#!/usr/bin/env python3
"""Builds the bundle as an Ansible collection (galaxy.yml) and checks what is in it.

Fails (exit 1) when galaxy.yml's version differs from the janitor's (the one version of a
release), when the built tarball lacks what a cache host needs from it (the site playbook,
every role of it with its argument spec, the filters, the Dockerfile and the janitor's source
the registry role builds into the image), or when it carries the checkout's tests and caches;
and when the checkout's own way to the filters, collections/…/plugins, is not the link to
plugins/ (a tool that installs the checkout as a collection there replaces it).
  scripts/check-collection.py [OUTPUT_DIR]     (make lint; default .cache/collection)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

TOP = Path(__file__).resolve().parent.parent
ROLES = ["host", "docker", "storagebox", "registry", "janitor"]
NEEDED = [
    "playbooks/site.yml",
    "playbooks/preflight.yml",
    "playbooks/sweep.yml",
    "playbooks/uninstall.yml",
    "plugins/filter/host_cidr.py",
    "plugins/filter/registry_mirrors.py",
    "plugins/modules/registry_htpasswd.py",
    "plugins/modules/registry_build_context.py",
    "meta/runtime.yml",
    "Dockerfile",
    "files/janitor/pyproject.toml",
    "files/janitor/src/registry_janitor/__init__.py",
    "LICENSE",
    *(f"roles/{role}/meta/argument_specs.yml" for role in ROLES),
]
# Top-level folders of the checkout that are development only, and folders anywhere below.
NOT_WANTED = re.compile(r"^(molecule|tests|bench|tools|scripts|\.[a-z_]*cache|\.venv|\.git|collections)/"
                        r"|/(tests|__pycache__)/")  # fmt: skip


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else TOP / ".cache" / "collection"
    galaxy = yaml.safe_load((TOP / "galaxy.yml").read_text())
    init = (TOP / "files/janitor/src/registry_janitor/__init__.py").read_text()
    janitor = re.search(r'__version__ = "([^"]+)"', init)
    problems = []
    if not janitor or janitor.group(1) != galaxy["version"]:
        problems.append(
            f"galaxy.yml's version {galaxy['version']} is not the janitor's"
            f" ({janitor.group(1) if janitor else 'not found'}): set both to the release's"
        )
    link = (
        TOP / "collections/ansible_collections" / galaxy["namespace"] / galaxy["name"] / "plugins"
    )
    if not link.is_symlink() or link.resolve() != (TOP / "plugins").resolve():
        problems.append(f"{link.relative_to(TOP)} must be a link to plugins/: git checkout it")
    tool = Path(sys.executable).with_name("ansible-galaxy")
    subprocess.run(
        [str(tool), "collection", "build", "--force", "--output-path", str(out), str(TOP)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tarball = out / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    problems += [f"{tarball.name} lacks {name}" for name in NEEDED if name not in names]
    problems += [
        f"{tarball.name} carries {name} (add it to galaxy.yml's build_ignore)"
        for name in sorted(names)
        if NOT_WANTED.search(name)
    ]
    for problem in problems:
        print(f"check-collection: {problem}", file=sys.stderr)
    if not problems:
        print(f"check-collection: {tarball.relative_to(TOP)} ({len(names)} entries) is complete")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
