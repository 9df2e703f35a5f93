#!/usr/bin/python3
"""Ansible module: a Docker build context directory holding exactly the given files."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_build_context
short_description: Writes a Docker build context directory with exactly the given files
description:
  - Writes each file whose content or mode differs, and removes every other file and
    every directory no given file lives in, so the directory holds exactly the given files.
  - All files arrive in one module call (one transfer per run, however many files the
    build context has).
  - Files are written 0644, or 0755 when listed in I(executables); directories 0755.
  - Supports check mode (reports what it would write and remove).
options:
  path:
    description: The build context directory; the module owns everything below it.
    type: path
    required: true
  files:
    description: Relative path (no C(.) or C(..) components) -> text content.
    type: dict
    required: true
  executables:
    description: Relative paths of I(files) that are written 0755.
    type: list
    elements: str
    default: []
"""

RETURN = r"""
written: {description: Relative paths written (new or changed)., type: list}
removed: {description: Relative paths removed (files, then emptied directories)., type: list}
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule  # type: ignore[import-untyped]


def is_current(target: str, data: bytes, mode: int) -> bool:
    """True when target is a regular file (not a symlink) with this content and mode."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != mode:
        return False
    with open(target, "rb") as handle:
        return handle.read() == data


def write(target: str, data: bytes, mode: int) -> None:
    """Replace target atomically (temp file in the same directory, then rename)."""
    directory = os.path.dirname(target)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.lexists(target) and os.path.isdir(target) and not os.path.islink(target):
        raise IsADirectoryError(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-context-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True},
            "executables": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    root: str = module.params["path"]
    files: dict[str, object] = module.params["files"]
    executables = set(module.params["executables"])

    for rel, content in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
            module.fail_json(msg=f"registry_build_context: bad relative path {rel!r}")
        if not isinstance(content, str):
            module.fail_json(msg=f"registry_build_context: the content of {rel} is not text")
    unknown = sorted(executables - set(files))
    if unknown:
        module.fail_json(msg=f"registry_build_context: executables not in files: {unknown}")

    # Directories that hold a given file (at any depth) stay.
    keep_dirs = {
        "/".join(rel.split("/")[:n]) for rel in files for n in range(1, rel.count("/") + 1)
    }

    written: list[str] = []
    for rel in sorted(files):
        data = str(files[rel]).encode("utf-8")
        mode = 0o755 if rel in executables else 0o644
        target = os.path.join(root, rel)
        if is_current(target, data, mode):
            continue
        written.append(rel)
        if not module.check_mode:
            try:
                write(target, data, mode)
            except OSError as error:
                module.fail_json(msg=f"registry_build_context: cannot write {target}: {error}")

    removed: list[str] = []
    if os.path.isdir(root):
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in sorted(filenames) + sorted(
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                if rel not in files:
                    removed.append(rel)
                    if not module.check_mode:
                        os.unlink(path)
            for name in sorted(dirnames):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                if os.path.islink(path) or rel in keep_dirs:
                    continue
                removed.append(rel + "/")
                if not module.check_mode:
                    os.rmdir(path)

    module.exit_json(changed=bool(written or removed), written=written, removed=removed)


if __name__ == "__main__":
    main()
