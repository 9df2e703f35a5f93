"""Throughput of `registry-janitor verify` against `sha256sum` of the same blob files.

    python3 bench/verify_throughput.py [--size-mib 2048] [--slow-size-mib 64] [--only local,slowfs]

Generates a blob store once into ``--cache`` (default /var/tmp/registry-cache-bench/verify):
blobs in the registry's layout (``docker/registry/v2/blobs/sha256/<ab>/<hex>/data``), sizes
drawn (fixed seed) like a CI cache's: most bytes in layers of 1-256 MiB, most files small
(configs and manifests of 1-64 KiB). Then, best of ``--repeat`` runs each:

- local: the page cache warmed first, so this is hashing and reading from memory, the part
  the janitor's own code decides. ``sha256sum`` over every data file (one process, as an
  operator would run it), the same split over the cores (``xargs -P``), ``openssl dgst
  -sha256`` (OpenSSL's SHA-256, which Python's hashlib uses too), and the janitor at
  concurrency 1 and at its default: a real run (``--verify-budget unlimited
  --verify-interval 0``: every blob hashed every run, the state written as in production).
- slowfs: the same comparison through bench/slowfs.py (a FUSE passthrough that sleeps
  ``--latency-ms`` per operation, nothing cached by the kernel: a model of the Storage Box)
  over a smaller store. slowfs is read-only, so the janitor runs with ``--dry-run`` (it hashes
  exactly the same, and writes neither state nor lock).

Prints a table and writes it with the raw figures to ``<cache>/results.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import slowfs

BLOBS = Path("docker/registry/v2/blobs/sha256")
SEED = 20261130
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sizes(total: int, seed: int = SEED) -> list[int]:
    """Blob sizes adding up to about `total` bytes: 85 % of the bytes in layers of 1-256 MiB
    (log-uniform), the rest in small blobs of 1-64 KiB (configs, manifests, tiny layers)."""
    rng = random.Random(seed)
    out: list[int] = []
    big = int(total * 0.85)
    while big > MIB:
        size = min(big, int(2 ** rng.uniform(20, 28)))
        out.append(size)
        big -= size
    small = total - sum(out)
    while small > 1024:
        size = min(small, int(2 ** rng.uniform(10, 16)))
        out.append(size)
        small -= size
    rng.shuffle(out)
    return out


def generate(root: Path, total: int) -> tuple[int, int]:
    """The store under `root` (kept when its marker says it was built for `total`)."""
    marker = root / "spec.json"
    spec = {"total": total, "seed": SEED, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        files = list((root / BLOBS).glob("*/*/data"))
        return len(files), sum(p.stat().st_size for p in files)
    if root.exists():
        shutil.rmtree(root)
    (root / "docker/registry/v2/repositories").mkdir(parents=True)
    rng = random.Random(SEED)
    count = written = 0
    for size in sizes(total):
        data = rng.randbytes(size)
        hexd = hashlib.sha256(data).hexdigest()
        path = root / BLOBS / hexd[:2] / hexd / "data"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
        written += size
    marker.write_text(json.dumps(spec))
    return count, written


def data_files(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / BLOBS).glob("*/*/data"))


def timed(
    cmd: list[str], stdin: str | None = None, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall, r


def sha256sum(files: list[str], parallel: int = 1) -> tuple[float, str]:
    """`find ... -print0 | xargs -0 [-P N] sha256sum` over the files given."""
    split = ["-P", str(parallel), "-n", str(-(-len(files) // parallel))] if parallel > 1 else []
    wall, r = timed(["xargs", "-0", *split, "sha256sum"], stdin="\0".join(files))
    return wall, r.stdout


def openssl(files: list[str]) -> tuple[float, str]:
    wall, r = timed(["xargs", "-0", "openssl", "dgst", "-sha256"], stdin="\0".join(files))
    return wall, r.stdout


def janitor(root: Path, concurrency: int, *extra: str) -> tuple[float, dict[str, object]]:
    cmd = [
        sys.executable, "-m", "registry_janitor", "verify", "--json",
        "--data-dir", str(root), "--registry-config", "/dev/null",
        "--verify-budget", "unlimited", "--verify-interval", "0",
        "--concurrency", str(concurrency), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "VERIFY_"))}
    wall, r = timed(cmd, env=env)
    summary = [json.loads(x) for x in r.stdout.splitlines() if '"summary"' in x][-1]
    return wall, summary


def best(runs: int, fn: Callable[[], tuple[float, object]]) -> tuple[float, object, list[float]]:
    """The fastest of `runs` runs: (its wall time, its output, every wall time)."""
    results = [fn() for _ in range(runs)]
    wall, out = min(results, key=lambda r: r[0])
    return wall, out, [r[0] for r in results]


def check_digests(sums: str, files: list[str]) -> None:
    """sha256sum must agree with the names (the store is intact: the janitor found 0 corrupt)."""
    lines = sums.splitlines()
    assert len(lines) == len(files), (len(lines), len(files))
    for line in lines:
        digest, path = line.split(maxsplit=1)
        assert Path(path).parent.name == digest, line


def run_local(cache: Path, size_mib: int, repeat: int) -> dict[str, object]:
    root = cache / f"store-{size_mib}m"
    count, total = generate(root, size_mib * MIB)
    log(f"local store: {count} blobs, {total / MIB:.0f} MiB ({root})")
    files = data_files(root)
    sha256sum(files, os.cpu_count() or 1)  # warm the page cache
    res: dict[str, object] = {"blobs": count, "bytes": total, "cpus": os.cpu_count()}
    wall, sums, walls = best(repeat, lambda: sha256sum(files))
    check_digests(str(sums), files)
    res["sha256sum"] = {"wall_s": wall, "runs": walls}
    cpus = os.cpu_count() or 1
    wall, _, walls = best(repeat, lambda: sha256sum(files, cpus))
    res[f"sha256sum_P{cpus}"] = {"wall_s": wall, "runs": walls}
    if shutil.which("openssl"):  # the same SHA-256 code hashlib uses: what the CPU can do
        wall, _, walls = best(repeat, lambda: openssl(files))
        res["openssl"] = {"wall_s": wall, "runs": walls}
    for conc in (1, 8):
        wall, summary, walls = best(repeat, lambda c=conc: janitor(root, c))  # type: ignore[misc]
        assert isinstance(summary, dict)
        assert summary["blobs_verified"] == count and not summary["corrupt"], summary
        res[f"janitor_c{conc}"] = {
            "wall_s": wall,
            "runs": walls,
            "hash_s": summary["hash_seconds"],
            "duration_s": summary["duration"],
        }
    return res


def run_slowfs(cache: Path, size_mib: int, latency_ms: float, repeat: int) -> dict[str, object]:
    root = cache / f"store-{size_mib}m"
    count, total = generate(root, size_mib * MIB)
    log(f"slowfs store: {count} blobs, {total / MIB:.0f} MiB, {latency_ms:g} ms per operation")
    mnt = cache / "slowfs-mnt"
    res: dict[str, object] = {"blobs": count, "bytes": total, "latency_ms": latency_ms}
    # mfusepy loads libfuse 2 when both are installed, and slowfs needs libfuse 3's options.
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

    def mounted(label: str, fn: Callable[[Path], tuple[float, object]]) -> None:
        stats = cache / f"slowfs-{label}.json"
        walls: list[float] = []
        with slowfs.mounted(root, mnt, latency_ms, stats, sys.executable):
            for _ in range(repeat):
                wall, _ = fn(mnt)
                walls.append(wall)
        ops = slowfs.read_stats(stats)
        res[label] = {"wall_s": min(walls), "runs": walls, "ops": ops}
        log(f"  {label}: {min(walls):.2f} s (runs {walls}), {sum(ops.values()) // repeat} ops/run")

    mounted("sha256sum", lambda m: sha256sum(data_files(m)))
    for conc in (1, 8):
        mounted(f"janitor_c{conc}", lambda m, c=conc: janitor(m, c, "--dry-run"))  # type: ignore[misc]
    return res


def table(results: dict[str, object], argv: list[str]) -> str:
    rows = [
        "| where | contender | wall | throughput | vs sha256sum |",
        "| --- | --- | --- | --- | --- |",
    ]
    for where, res in results.items():
        if not isinstance(res, dict):
            continue
        total = int(res["bytes"])
        base = res["sha256sum"]["wall_s"]
        for name, fig in res.items():
            if not isinstance(fig, dict) or "wall_s" not in fig:
                continue
            wall = float(fig["wall_s"])
            label = {
                "sha256sum": "sha256sum (1 process)",
                "openssl": "openssl dgst -sha256 (1 process)",
                "janitor_c1": "registry-janitor verify, concurrency 1",
                "janitor_c8": "registry-janitor verify, concurrency 8 (default)",
            }.get(name, name.replace("sha256sum_P", "sha256sum, xargs -P "))
            rows.append(
                f"| {where} | {label} | {wall:.2f} s | {total / MIB / wall:.0f} MiB/s"
                f" | {wall / base:.2f}x |"
            )
    cmd = " ".join(["python3 bench/verify_throughput.py", *argv])
    head = f"Command: `{cmd}`; load average {results.get('load', '')}\n\n"
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path("/var/tmp/registry-cache-bench/verify"))
    p.add_argument("--size-mib", type=int, default=2048)
    p.add_argument("--slow-size-mib", type=int, default=64)
    p.add_argument("--latency-ms", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3, help="runs per contender on local disk")
    p.add_argument("--slow-repeat", type=int, default=1, help="runs per contender on slowfs")
    p.add_argument("--only", default="local,slowfs")
    a = p.parse_args(argv)
    a.cache.mkdir(parents=True, exist_ok=True)
    parts = a.only.split(",")
    results: dict[str, dict[str, object]] = {}
    load_before = os.getloadavg()
    if "local" in parts:
        results["local disk (warm cache)"] = run_local(a.cache, a.size_mib, a.repeat)
    if "slowfs" in parts:
        results[f"slowfs {a.latency_ms:g} ms/op"] = run_slowfs(
            a.cache, a.slow_size_mib, a.latency_ms, a.slow_repeat
        )
    load = f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (1 min)"
    text = table({**results, "load": load}, sys.argv[1:] if argv is None else argv)
    print(text)
    (a.cache / "results.json").write_text(json.dumps({**results, "load": load}, indent=2))
    (a.cache / "results.md").write_text(text)


if __name__ == "__main__":
    main()
