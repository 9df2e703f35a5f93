"""What the registry's log as the janitor's barrier costs (files/janitor/README.md).

1. The registry's latency: 3,000 blob HEADs through Debian's docker-registry on loopback,
   its log (info level) written to a file (the deployment) or to /dev/null; p50 and p99.
2. The janitor's reading: a log of N synthetic "response completed" blob-HEAD lines (the
   registry's own text format), read whole by RegistryLog.read_all (what each mark does):
   bytes per line, CPU seconds.
3. The pull feed: N lines of which a third are manifest GETs and HEADs of 10,000 tags (the
   rest blob HEADs), read by RegistryLog.read_since with pulls collected (what each sweep
   does with a pull record), merged into the record, and the record saved on a local disk:
   CPU seconds, the record's size.

    python3 bench/registry_log.py [--lines 1000000] [--no-latency]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "files" / "janitor" / "src"))
from registry_janitor import pulls
from registry_janitor.registry_log import RegistryLog
from registry_janitor.storage import FilesystemStorage

LINE = (
    'time="2026-12-07T01:23:37.175264939Z" level=info msg="response completed"'
    ' go.version=go1.24.4 http.request.host="127.0.0.1:5000"'
    " http.request.id=ac9c7bc1-68dd-44f7-8b48-4ef6ccccb132 http.request.method=HEAD"
    ' http.request.remoteaddr="172.20.0.1:41970" http.request.uri="/v2/load/r1/blobs/sha256:{h}"'
    " http.request.useragent=skopeo/1.18.0 http.response.duration=3.1ms"
    " http.response.status=200 http.response.written=0\n"
)


def latency(work: Path, to_file: bool, port: int) -> dict[str, float]:
    cfg = work / f"config-{port}.yml"
    cfg.write_text(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work}/root-{port}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    out = (work / "registry.log").open("ab") if to_file else subprocess.DEVNULL
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=out, stderr=out)
    try:
        time.sleep(1.5)
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("POST", "/v2/a/blobs/uploads/")
        r = c.getresponse()
        r.read()
        path = str(r.getheader("Location")).split(f"127.0.0.1:{port}")[-1]
        data = os.urandom(1000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        c.request("PUT", f"{path}{'&' if '?' in path else '?'}digest={digest}", body=data)
        c.getresponse().read()
        took = []
        for _ in range(3000):
            t = time.perf_counter()
            c.request("HEAD", f"/v2/a/blobs/{digest}")
            c.getresponse().read()
            took.append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait()
    took.sort()
    return {"p50_ms": round(took[1500] * 1000, 3), "p99_ms": round(took[2970] * 1000, 3)}


def reading(work: Path, lines: int) -> dict[str, float]:
    path = work / "big.log"
    with path.open("w") as f:
        for _ in range(lines):
            f.write(LINE.format(h=f"{random.getrandbits(256):064x}"))
    cpu, wall = time.process_time(), time.monotonic()
    reader = RegistryLog(path)
    found = reader.read_all() or {}
    reader.close()
    return {
        "lines": reader.lines,
        "digests": len(found),
        "bytes_per_line": round(path.stat().st_size / lines),
        "cpu_s": round(time.process_time() - cpu, 1),
        "wall_s": round(time.monotonic() - wall, 1),
    }


def pull_feed(work: Path, lines: int, tags: int = 10_000) -> dict[str, float]:
    path = work / "pulls.log"
    manifest = LINE.replace("/blobs/sha256:{h}", "/manifests/{h}")
    with path.open("w") as f:
        for i in range(lines):
            if i % 3:
                f.write(LINE.format(h=f"{random.getrandbits(256):064x}"))
            else:
                tag = f"t{random.randrange(tags)}"
                line = manifest.format(h=tag)
                f.write(line if i % 2 else line.replace("method=HEAD", "method=GET"))
    store = work / "store"
    store.mkdir()
    storage = FilesystemStorage(store)
    cpu, wall = time.process_time(), time.monotonic()
    reader = RegistryLog(path, pulls=True)
    feed = pulls.read_feed(storage, reader, time.time())
    reader.close()
    read_cpu = time.process_time() - cpu
    pulls.save(storage, feed.record)
    return {
        "lines": reader.lines,
        "pulls": len(feed.read),
        "bytes_per_line": round(path.stat().st_size / lines),
        "read_cpu_s": round(read_cpu, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "wall_s": round(time.monotonic() - wall, 1),
        "record_bytes": (store / pulls.PULLS_FILE).stat().st_size,
        "record_refs": sum(len(r) for r in feed.record.pulls.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--no-latency", action="store_true", help="skip the registry's latency")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_latency:
            for to_file, port in ((False, 5197), (True, 5198), (False, 5199), (True, 5196)):
                row = {"log": "file" if to_file else "/dev/null", **latency(work, to_file, port)}
                print(json.dumps(row), flush=True)
        print(json.dumps({"read_all": reading(work, args.lines)}), flush=True)
        print(json.dumps({"pull_feed": pull_feed(work, args.lines)}), flush=True)


if __name__ == "__main__":
    main()
