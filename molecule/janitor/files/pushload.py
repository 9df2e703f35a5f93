"""A bounded push load for the pushes-during-sweeps test: run inside the test host.

    python3 pushload.py OUT.jsonl STOPFILE [--repos 4] [--max-seconds 1800]
    python3 pushload.py --check OUT.jsonl STATE.json
    python3 pushload.py --age OUT.jsonl STATE.json V2_DIR


Pushes one image after another with skopeo until STOPFILE exists, round robin over
load/r0..rN. Each image has three layers: one shared by every image, one reused from an image
pushed 20-120 pushes earlier (by then pruned and unlinked by the sweeps, so its layer is
exactly what garbage-collect is about to delete) and one of fresh random bytes. One JSON line
per push: ref, manifest digest, every blob, ok, error, start and end time.

--check pulls, by digest and completely (skopeo verifies every blob), every successful push
not checked before (STATE.json remembers them), and prints a JSON summary; a manifest the
registry no longer has counts as lost.

--age moves the revision links and the blobs of pushes --check has already verified three
hours back, so the janitor's one-hour grace for unreachable revisions and the two-hour grace
of its own GC let this sweep collect them. Pushes not verified yet are never aged: the
janitor may delete their tags, never their manifests, so a manifest missing at --check is a
lost push, not policy. A blob an unverified push shares with a verified one is aged with it,
as on a real store (a push that finds a layer already there does not touch it): that is the
HEAD-then-PUT race the janitor's hold, settle and re-check must win.
"""

import argparse
import collections
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REGISTRY = "127.0.0.1:5000"


def layer(name, payload):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def write_layout(path, tag, layers):
    """layers: [(gz bytes, diff_id)]; returns (manifest digest, {blob digest: size})."""
    shutil.rmtree(path, ignore_errors=True)
    blobs_dir = path / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)
    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs_dir / digest[7:]).write_bytes(data)
        blobs[digest] = len(data)
        return digest

    descs = [{"mediaType": OCI_LAYER, "digest": blob(gz), "size": len(gz)} for gz, _ in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blob(config), "size": len(config)},
            "layers": descs,
        }
    ).encode()
    top = blob(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": top,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return top, blobs


def manifest_status(repo, digest):
    req = urllib.request.Request(
        f"http://{REGISTRY}/v2/{repo}/manifests/{digest}",
        method="HEAD",
        headers={"Accept": OCI_MANIFEST},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def check(out_path, state_path):
    state = json.loads(Path(state_path).read_text()) if Path(state_path).exists() else {}
    checked = set(state.get("checked", []))
    summary = {
        "checked": 0,
        "pulled": 0,
        "lost": [],
        "broken": [],
        "pushes": 0,
        "refused": 0,
        "refused_errors": [],
    }
    dest = Path("/var/tmp/pushload/pull")
    for line in Path(out_path).read_text().splitlines():
        rec = json.loads(line)
        summary["pushes"] += 1
        summary["refused"] += not rec["ok"]
        if not rec["ok"] and len(summary["refused_errors"]) < 5:
            summary["refused_errors"].append({"ref": rec["ref"], "error": rec["error"]})
        if not rec["ok"] or str(rec["n"]) in checked:
            continue
        checked.add(str(rec["n"]))
        summary["checked"] += 1
        repo = rec["ref"].split(":")[0]
        if manifest_status(repo, rec["digest"]) != 200:
            summary["lost"].append(rec["ref"])
            continue
        shutil.rmtree(dest, ignore_errors=True)
        result = subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests",
             "--src-tls-verify=false", f"docker://{REGISTRY}/{repo}@{rec['digest']}", f"oci:{dest}:x"],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if result.returncode == 0:
            summary["pulled"] += 1
        else:
            summary["broken"].append({"ref": rec["ref"], "error": result.stderr.strip()[-300:]})
    state["checked"] = sorted(checked)
    Path(state_path).write_text(json.dumps(state))
    print(json.dumps(summary))
    return 0


def age(out_path, state_path, v2):
    state = json.loads(Path(state_path).read_text()) if Path(state_path).exists() else {}
    checked = set(state.get("checked", []))
    then = time.time() - 3 * 3600
    for line in Path(out_path).read_text().splitlines():
        rec = json.loads(line)
        if rec["ok"] and str(rec["n"]) in checked:
            repo = rec["ref"].split(":")[0]
            link = Path(v2, "repositories", repo, "_manifests", "revisions", "sha256")
            paths = [link / rec["digest"][7:] / "link"]
            paths += [Path(v2, "blobs", "sha256", d[7:9], d[7:], "data") for d in rec["blobs"]]
            for path in paths:
                try:
                    os.utime(path, (then, then))
                except FileNotFoundError:
                    pass  # already unlinked or collected by an earlier sweep
    return 0


def main():
    if sys.argv[1:2] == ["--check"]:
        return check(sys.argv[2], sys.argv[3])
    if sys.argv[1:2] == ["--age"]:
        return age(sys.argv[2], sys.argv[3], sys.argv[4])
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("stop")
    ap.add_argument("--repos", type=int, default=4)
    # Bounded by time, not by a count: a fast machine must not run out of pushes before the
    # sweeps end (then later sweeps find nothing to collect).
    ap.add_argument("--max-seconds", type=float, default=1800)
    args = ap.parse_args()
    work = Path("/var/tmp/pushload")
    shared = layer("shared.txt", b"the layer every load image shares\n")
    uniques = collections.deque(maxlen=120)  # the random layers of the last 120 pushes
    with open(args.out, "a", buffering=1) as out:
        deadline = time.monotonic() + args.max_seconds
        n = -1
        while not os.path.exists(args.stop) and time.monotonic() < deadline:
            n += 1
            own = layer(f"own-{n}.bin", os.urandom(16 * 1024))
            reused = uniques[-random.randint(20, 120)] if len(uniques) >= 120 else shared
            uniques.append(own)
            ref = f"load/r{n % args.repos}:p{n:05d}"
            top, blobs = write_layout(work / "layout", "x", [shared, reused, own])
            start = time.time()
            result = subprocess.run(
                ["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests",
                 "--dest-tls-verify=false", f"oci:{work / 'layout'}:x", f"docker://{REGISTRY}/{ref}"],
                capture_output=True, text=True, check=False, timeout=120,
            )  # fmt: skip
            record = {
                "n": n,
                "ref": ref,
                "digest": top,
                "blobs": blobs,
                "ok": result.returncode == 0,
                "error": result.stderr.strip()[-300:],
                "start": start,
                "end": time.time(),
            }
            out.write(json.dumps(record) + "\n")
            if not record["ok"]:
                time.sleep(0.2)  # refused (read-only window): do not spin
    return 0


if __name__ == "__main__":
    sys.exit(main())
