"""What the registry's log as the janitor's barrier costs (files/janitor/README.md).

1. The registry's latency: 3,000 blob HEADs through Debian's docker-registry on loopback,
   its log (info level) written to a file (the deployment) or to /dev/null; p50 and p99.
2. The janitor's reading: a log of N synthetic "response completed" blob-HEAD lines (the
   registry's own text format), read whole by RegistryLog.read_all (what each mark does):
   bytes per line, CPU seconds.

    python3 bench/registry_log.py [--lines 1000000]
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
from registry_janitor.registry_log import RegistryLog

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for to_file, port in ((False, 5197), (True, 5198), (False, 5199), (True, 5196)):
            row = {"log": "file" if to_file else "/dev/null", **latency(work, to_file, port)}
            print(json.dumps(row), flush=True)
        print(json.dumps({"read_all": reading(work, args.lines)}), flush=True)


if __name__ == "__main__":
    main()
