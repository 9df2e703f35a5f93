"""The janitor on a bucket against the registry's own garbage-collect on the same bucket.

A real S3 server: Ceph's RADOS Gateway on loopback, single node, data in memory (the test
fixture in files/janitor/tests/rgw.py). For each size, a synthetic store (store.py, written in
January 2026, so every object is past every grace period) is uploaded with its mtimes into
fresh buckets, and then:

- ``gc``: the store pruned beforehand (``registry-janitor prune`` on local disk, then
  uploaded), collected by ``registry-janitor gc`` (JANITOR_STORAGE=s3, GC_SETTLE=0) in one
  bucket and by ``registry garbage-collect`` (no ``--delete-untagged``) in another. Both must
  leave exactly the same objects.
- ``sweep``: the unpruned store, ``registry-janitor sweep`` (retention, then its GC). The
  registry has nothing to compare it with: it has no retention.

Each run gives its wall time and the S3 requests the gateway served meanwhile (``rgw.req``
of its performance counters, through its admin socket), per tag of the store. The gateway is
on loopback (well under a millisecond per request): on a remote object store, requests times
latency divided by concurrency is the part that grows (docs/s3.md has the estimate).

    python bench/s3_gc.py [--sizes 1500,5000] [--keep 5] [--parts gc,sweep]    # or: make bench-s3

``--parts gc`` or ``--parts sweep`` runs only that part (a large store's sweep needs its own
upload of the unpruned store, which takes as long as a collection on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "files" / "janitor" / "tests"))

import contenders as C
import report as R
import rgw
from store import StoreSpec, cached_store, copy_store, remove_tree

# GC_SETTLE=0 in timed runs (the settle period is a fixed wait, not work): below the floor
# production enforces (registry_janitor.config.SETTLE_FLOOR).
os.environ.setdefault("JANITOR_TEST_SETTLE_FLOOR", "0")

# Tags -> the store: repositories x tags per repository (3 blobs per tag, see store.py).
SPECS = {
    1500: StoreSpec("s3a", 30, 50),
    5000: StoreSpec("s3b", 20, 250),
    20000: StoreSpec("s3c", 20, 1000),
}
ROOT = "registry"  # the registry's rootdirectory in each bucket
UPLOAD_SLICE = 10_000  # objects per upload helper process


@dataclass
class Run:
    what: str
    tags: int
    seconds: float
    requests: int
    objects_before: int
    objects_after: int

    @property
    def per_tag(self) -> float:
        return self.requests / self.tags


def log(msg: str) -> None:
    print(msg, flush=True)


def requests_served(gw: rgw.RadosGateway) -> int:
    """The main gateway's request counter (its admin socket; the aging one is not asked)."""
    pid = gw.procs["rgw"].pid
    [sock] = (gw.workdir / "run").glob(f"client.rgw.{pid}.asok")
    out = subprocess.run(
        [rgw.CEPH or "ceph", "--admin-daemon", str(sock), "perf", "dump"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return int(json.loads(out)["rgw"]["req"])


def upload(gw: rgw.RadosGateway, hint: str, root: Path) -> rgw.Bucket:
    """A new bucket holding the store under ``root`` with each file's mtime."""
    bucket = gw.bucket(hint, ROOT)
    files = {}
    for dirpath, _, names in os.walk(root / "docker"):
        for n in names:
            p = Path(dirpath) / n
            files[f"{ROOT}/{p.relative_to(root)}"] = (p, p.stat().st_mtime)
    start = time.monotonic()
    # In slices: each upload is one helper process with a 10-minute timeout, which a
    # 20,000-tag store's 100,000 objects overrun on a loaded VM.
    keys = sorted(files)
    for i in range(0, len(keys), UPLOAD_SLICE):
        gw.upload(bucket.name, {k: files[k] for k in keys[i : i + UPLOAD_SLICE]})
    log(f"  uploaded {len(files)} objects to {bucket.name} in {time.monotonic() - start:.1f} s")
    return bucket


def objects(gw: rgw.RadosGateway, bucket: rgw.Bucket) -> dict[str, str]:
    """key -> ETag under the store's root."""
    return {k: str(v["ETag"]) for k, v in gw.objects(bucket.name, f"{ROOT}/").items()}


def registry_config(gw: rgw.RadosGateway, bucket: rgw.Bucket, path: Path) -> Path:
    path.write_text(
        "version: 0.1\nstorage:\n"
        "  s3:\n"
        f"    accesskey: {rgw.ACCESS_KEY}\n    secretkey: {rgw.SECRET_KEY}\n"
        f"    region: {rgw.REGION}\n    regionendpoint: {gw.endpoint}\n"
        f"    bucket: {bucket.name}\n    rootdirectory: /{ROOT}\n    secure: false\n"
        "  redirect:\n    disable: true\n"
        "http:\n  addr: 127.0.0.1:0\n"
    )
    path.chmod(0o600)
    return path


def janitor_cmd(
    gw: rgw.RadosGateway, bucket: rgw.Bucket, command: str, work: Path, *args: str
) -> list[str]:
    return [
        C.janitor_bin(), command, "--run-once", "--json",
        "--storage", "s3", "--s3-endpoint", gw.endpoint, "--s3-bucket", bucket.name,
        "--s3-root-directory", ROOT, "--s3-region", rgw.REGION,
        "--data-dir", str(work), "--lock-file", str(work / "janitor.lock"),
        "--registry-config", str(registry_config(gw, bucket, work / "config.yml")),
        "--gc-settle", "0", *args,
    ]  # fmt: skip


def env() -> dict[str, str]:
    # Credentials only in the environment, as the deployment passes them.
    return rgw.without_ca_bundle(os.environ) | {
        "JANITOR_S3_ACCESS_KEY": rgw.ACCESS_KEY,
        "JANITOR_S3_SECRET_KEY": rgw.SECRET_KEY,
    }


def timed(
    gw: rgw.RadosGateway, what: str, tags: int, bucket: rgw.Bucket, cmd: list[str], out: Path
) -> Run:
    before = objects(gw, bucket)
    reqs = requests_served(gw)
    start = time.monotonic()
    with out.open("w") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), check=False)
    seconds = time.monotonic() - start
    reqs = requests_served(gw) - reqs
    if result.returncode != 0:
        raise SystemExit(f"{what} failed ({result.returncode}): see {out}")
    after = objects(gw, bucket)
    own = sorted(k for k in after if not k.startswith(f"{ROOT}/docker/"))
    if own:
        log(f"  {what}: left outside the registry's tree: {', '.join(own)}")
    run = Run(what, tags, seconds, reqs, len(before), len(after))
    log(
        f"  {what}: {seconds:.1f} s, {reqs} requests ({run.per_tag:.1f} per tag),"
        f" objects {len(before)} -> {len(after)}; load average {R.loads(*os.getloadavg())}"
    )
    return run


def bench_size(
    gw: rgw.RadosGateway, tags: int, keep: int, cache: Path, work: Path, parts: set[str]
) -> list[Run]:
    spec = SPECS[tags]
    log(f"== {tags} tags ({spec.repos} repositories x {spec.tags}), keep {keep} per repository")
    source = cached_store(cache / "stores", spec)
    runs = []
    if "gc" in parts:
        runs += bench_gc(gw, tags, keep, source, work)
    if "sweep" in parts:
        # The whole sweep on the unpruned store.
        whole = upload(gw, f"janitor-sweep-{tags}", source)
        w = work / f"janitor-sweep-{tags}"
        w.mkdir(parents=True, exist_ok=True)
        cmd = janitor_cmd(gw, whole, "sweep", w, "--keep-last-n", str(keep))
        runs.append(timed(gw, "janitor sweep", tags, whole, cmd, w / "out"))
    return runs


def bench_gc(gw: rgw.RadosGateway, tags: int, keep: int, source: Path, work: Path) -> list[Run]:
    # The GC input: pruned once on local disk (the same prune for both collectors).
    pruned = copy_store(source, work / f"pruned-{tags}", sync=False)
    subprocess.run(
        [C.janitor_bin(), "prune", "--run-once", "--data-dir", str(pruned),
         "--keep-last-n", str(keep), "--lock-file", str(work / "prune.lock")],
        check=True, capture_output=True, env=env(),
    )  # fmt: skip
    runs = []
    mine = upload(gw, f"janitor-gc-{tags}", pruned)
    stock = upload(gw, f"stock-gc-{tags}", pruned)
    remove_tree(pruned)
    w = work / f"janitor-gc-{tags}"
    w.mkdir(parents=True, exist_ok=True)
    runs.append(timed(gw, "janitor gc", tags, mine, janitor_cmd(gw, mine, "gc", w), w / "out"))
    w = work / f"stock-gc-{tags}"
    w.mkdir(parents=True, exist_ok=True)
    cmd = [C.REGISTRY_BIN, "garbage-collect", str(registry_config(gw, stock, w / "config.yml"))]
    runs.append(timed(gw, "registry garbage-collect", tags, stock, cmd, w / "out"))
    left_mine, left_stock = objects(gw, mine), objects(gw, stock)
    if left_mine != left_stock:
        only = sorted(set(left_mine) ^ set(left_stock))[:10]
        raise SystemExit(f"the two collections left different objects, e.g. {only}")
    log(f"  both left the same {len(left_mine)} objects")
    return runs


def table(runs: list[Run]) -> str:
    lines = [
        "| store (tags) | run | time | S3 requests | requests per tag | objects before -> after |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.tags:,} | {r.what} | {R.secs(r.seconds)} | {r.requests:,} | {r.per_tag:.1f} |"
            f" {r.objects_before:,} -> {r.objects_after:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1500,5000", help="tags per store, of " + str(list(SPECS)))
    p.add_argument("--keep", type=int, default=5, help="tags kept per repository")
    p.add_argument("--cache", default="/var/tmp/registry-cache-bench-s3")
    p.add_argument("--memory-mib", type=int, default=4096, help="the gateway's in-memory OSD")
    p.add_argument("--parts", default="gc,sweep", help="of gc (both collections), sweep")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"gc", "sweep"}:
        p.error(f"--parts: gc, sweep or gc,sweep, not {args.parts!r}")
    # A SIGTERM (timeout, Ctrl-C in make) unwinds like an exception: the gateway's daemons
    # are stopped and the work directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if rgw.missing():
        raise SystemExit(f"needs: {rgw.missing()}")
    sizes = [int(s) for s in args.sizes.split(",")]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    log(f"load average at start: {R.loads(*os.getloadavg())}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        with rgw.running(work / "rgw", memory_mib=args.memory_mib) as gw:
            for tags in sizes:
                runs += bench_size(gw, tags, args.keep, cache, work, parts)
    log(f"load average at end: {R.loads(*os.getloadavg())}")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
