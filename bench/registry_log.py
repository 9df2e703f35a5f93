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

4. The notifications' cost: 3,000 manifest HEADs (a notification each) with no endpoint, with
   `registry-janitor listen` answering, and with an endpoint nobody answers; p50 and p99,
   and the listener's CPU seconds and journal bytes per event.

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
        digest = _put_blob(c, port, os.urandom(1000))
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


TOKEN = "bench-notifications-token-0123456789"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def notify_latency(work: Path, listener: str, port: int) -> dict[str, float]:
    """3,000 manifest HEADs (each one a notification) with no endpoint configured
    (`listener` "none"), the janitor's listener up ("up"), or an endpoint nobody answers
    ("down": the registry queues and retries). p50/p99 of the HEADs; with the listener up
    also its CPU seconds and journal bytes per event, once all are delivered."""
    listen_port = port + 1000
    cfg = work / f"config-{port}.yml"
    notify = (
        ""
        if listener == "none"
        else "notifications:\n  endpoints:\n    - name: registry-janitor\n"
        f"      url: http://127.0.0.1:{listen_port}/events\n"
        f"      headers:\n        Authorization: [Bearer {TOKEN}]\n"
        "      timeout: 5s\n      threshold: 3\n      backoff: 5s\n"
        "      ignoredmediatypes:\n        - application/octet-stream\n"
    )
    cfg.write_text(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work}/root-{port}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{notify}"
    )
    journal = work / f"journal-{port}.jsonl"
    listen = None
    if listener == "up":
        (work / "token").write_text(TOKEN)
        env = os.environ | {
            "JANITOR_LISTEN_ADDRESS": f"127.0.0.1:{listen_port}",
            "JANITOR_LISTEN_TOKEN_FILE": str(work / "token"),
            "JANITOR_NOTIFICATIONS_JOURNAL": str(journal),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "files" / "janitor" / "src"),
        }
        listen = subprocess.Popen([sys.executable, "-m", "registry_janitor", "listen"], env=env)
    log = (work / f"registry-{port}.log").open("ab")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log)
    try:
        time.sleep(1.5)
        c = http.client.HTTPConnection("127.0.0.1", port)
        config = _put_blob(c, port, b"{}")
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config,
                    "size": 2,
                },
                "layers": [],
            }
        ).encode()
        c.request("PUT", "/v2/a/manifests/t", manifest, {"Content-Type": MANIFEST_TYPE})
        assert c.getresponse().read() is not None
        took = []
        for _ in range(3000):
            t = time.perf_counter()
            c.request("HEAD", "/v2/a/manifests/t", headers={"Accept": MANIFEST_TYPE})
            c.getresponse().read()
            took.append(time.perf_counter() - t)
        took.sort()
        row = {"p50_ms": round(took[1500] * 1000, 3), "p99_ms": round(took[2970] * 1000, 3)}
        if listen is not None:
            events, deadline = 0, time.monotonic() + 120
            while events < 3001 and time.monotonic() < deadline:  # the push and the HEADs
                time.sleep(0.5)
                lines = journal.read_text().splitlines()[1:]
                events = sum(len(json.loads(x)["events"]) for x in lines)
            ticks = [int(x) for x in Path(f"/proc/{listen.pid}/stat").read_text().split()[13:15]]
            row |= {
                "events": events,
                "listener_cpu_s_per_million": round(
                    sum(ticks) / os.sysconf("SC_CLK_TCK") / events * 1e6
                ),
                "journal_mb_per_million": round(journal.stat().st_size / events, 1),
            }
        return row
    finally:
        proc.terminate()
        proc.wait()
        if listen is not None:
            listen.terminate()
            listen.wait()


def _put_blob(c: http.client.HTTPConnection, port: int, data: bytes) -> str:
    c.request("POST", "/v2/a/blobs/uploads/")
    r = c.getresponse()
    r.read()
    path = str(r.getheader("Location")).split(f"127.0.0.1:{port}")[-1]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    c.request("PUT", f"{path}{'&' if '?' in path else '?'}digest={digest}", body=data)
    c.getresponse().read()
    return digest


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
        if not args.no_latency:
            for listener, port in (("none", 5191), ("up", 5192), ("down", 5193), ("none", 5194)):
                row = {"notifications": listener, **notify_latency(work, listener, port)}
                print(json.dumps(row), flush=True)
        print(json.dumps({"read_all": reading(work, args.lines)}), flush=True)
        print(json.dumps({"pull_feed": pull_feed(work, args.lines)}), flush=True)


if __name__ == "__main__":
    main()
