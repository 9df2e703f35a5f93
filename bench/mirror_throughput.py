#!/usr/bin/env python3
"""Pull of one large image through a pull-through mirror (cold and warm) against a pull
straight from its upstream, with registries this script starts on loopback.

  python3 bench/mirror_throughput.py [--size-mib 1024] [--registry-bin docker-registry]

Starts two `docker-registry` processes (CNCF Distribution 2.8) with their stores under
--workdir: an upstream, and a mirror in proxy mode (the configuration registry_mirrors
deploys, without TLS). Pushes an image of one uncompressed layer of random bytes
(bench/throughput.py's) to the upstream with skopeo, then pulls it with skopeo into a new
OCI layout each time: from the upstream; through the mirror while it holds nothing (cold);
again once the mirror has stored the layer (warm); and warm with the upstream stopped.
Prints seconds and MiB/s per pull, how often the upstream served the layer, and how long
the mirror took to finish storing it after the cold pull returned.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from throughput import make_layout, timed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(
    binary: str, root: Path, port: int, log: Path, remote: str = ""
) -> subprocess.Popen[bytes]:
    config = root.with_suffix(".yml")
    proxy = f"proxy: {{remoteurl: {remote}}}\n" if remote else ""
    config.write_text(
        "version: 0.1\n"
        "log: {level: info, formatter: text}\n"
        f"storage: {{filesystem: {{rootdirectory: {root}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: bench}}\n" + proxy
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{binary} exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    raise SystemExit(f"{binary} did not listen on {port}")


def layer_served(log: Path, layer: str) -> int:
    """How many times the registry logged a complete 200 GET of the layer."""
    pattern = re.compile(rf'"GET /v2/\S+/blobs/sha256:{layer} HTTP/1.1" 200 ')
    return sum(1 for line in log.read_text(errors="replace").splitlines() if pattern.search(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--registry-bin", default="docker-registry")
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args()
    size = args.size_mib << 20
    mib = size / (1 << 20)
    version = subprocess.run(
        [args.registry_bin, "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        layer = make_layout(work / "src", size).name
        upstream_port, mirror_port = free_port(), free_port()
        upstream_log, mirror_log = work / "upstream.log", work / "mirror.log"
        upstream = start_registry(args.registry_bin, work / "upstream", upstream_port, upstream_log)
        mirror = None
        try:
            image = "bench/mirror:1"
            subprocess.run(
                ["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
                 f"oci:{work / 'src'}:big", f"docker://127.0.0.1:{upstream_port}/{image}"],
                check=True,
            )  # fmt: skip
            mirror = start_registry(
                args.registry_bin,
                work / "mirror",
                mirror_port,
                mirror_log,
                remote=f"http://127.0.0.1:{upstream_port}",
            )

            def pull(port: int) -> float:
                dest = work / "dst"
                shutil.rmtree(dest, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                seconds = timed(
                    ["skopeo", "copy", "-q", "--preserve-digests", "--src-tls-verify=false",
                     f"docker://127.0.0.1:{port}/{image}", f"oci:{dest}:big"]
                )  # fmt: skip
                pulled = dest / "blobs" / "sha256" / layer
                assert pulled.stat().st_size == size, "pulled layer has the wrong size"
                shutil.rmtree(dest)
                return seconds

            rows = []
            before = layer_served(upstream_log, layer)
            rows.append(("straight from the upstream", pull(upstream_port)))
            direct_served = layer_served(upstream_log, layer) - before

            before = layer_served(upstream_log, layer)
            cold = pull(mirror_port)
            returned = time.monotonic()
            stored = (
                work / "mirror" / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
            )
            while not (stored.exists() and stored.stat().st_size == size):
                if time.monotonic() - returned > 600:
                    raise SystemExit("the mirror did not store the layer within 600 s")
                time.sleep(0.05)
            fill = time.monotonic() - returned
            cold_served = layer_served(upstream_log, layer) - before
            rows.append(("through the mirror, cold", cold))

            before = layer_served(upstream_log, layer)
            rows.append(("through the mirror, warm", pull(mirror_port)))
            warm_served = layer_served(upstream_log, layer) - before

            upstream.terminate()
            upstream.wait()
            rows.append(("through the mirror, warm, upstream stopped", pull(mirror_port)))
        finally:
            for process in (mirror, upstream):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait()

        print(f"{args.size_mib} MiB layer, {version}, stores in {args.workdir}\n")
        print("| pull (skopeo, into an OCI layout) | seconds | MiB/s |\n| --- | ---: | ---: |")
        for name, secs in rows:
            print(f"| {name} | {secs:.1f} | {mib / secs:.0f} |")
        print(
            f"\nlayer served by the upstream: {direct_served}x for the direct pull, "
            f"{cold_served}x for the cold mirror pull, {warm_served}x for the warm one; "
            f"the mirror finished storing the layer {fill:.1f} s after the cold pull returned"
        )


if __name__ == "__main__":
    main()
