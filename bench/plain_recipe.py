"""The plain recipe the janitor is measured against, the usual do-it-yourself cleanup:
per repository, delete the tag directories beyond the newest N (ranked by ``current/link``
mtime), then run ``registry garbage-collect --delete-untagged CONFIG``.

Usage: python3 bench/plain_recipe.py STORE [--keep-last-n 10] --registry-config CONFIG
       [--registry-bin /usr/bin/docker-registry]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from store import iter_repositories


def prune(store: Path, keep: int) -> int:
    deleted = 0
    for _name, repo in iter_repositories(store):
        tags_dir = repo / "_manifests" / "tags"
        try:
            names = os.listdir(tags_dir)
        except FileNotFoundError:
            continue
        ranked = []
        for t in names:
            try:
                mtime = os.stat(tags_dir / t / "current" / "link").st_mtime
            except FileNotFoundError:
                mtime = 0.0
            ranked.append((mtime, t))
        ranked.sort(reverse=True)
        for _mtime, t in ranked[keep:]:
            shutil.rmtree(tags_dir / t)
            deleted += 1
    return deleted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("store", type=Path)
    p.add_argument("--keep-last-n", type=int, default=10)
    p.add_argument("--registry-config", required=True)
    p.add_argument("--registry-bin", default="/usr/bin/docker-registry")
    a = p.parse_args(argv)
    deleted = prune(a.store, a.keep_last_n)
    print(f"plain recipe: {deleted} tag directories deleted", flush=True)
    cmd = [a.registry_bin, "garbage-collect", "--delete-untagged", a.registry_config]
    rc = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    return rc.returncode


if __name__ == "__main__":
    sys.exit(main())
