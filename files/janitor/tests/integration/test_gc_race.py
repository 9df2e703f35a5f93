"""The race garbage collection must survive without a read-only window, through a real registry.

An old layer only a pruned image used is a collection candidate. A client HEADs it (200: the
registry still has it), so it will not upload it; the janitor runs, paused by its test hook at
one phase boundary (after mark, hold, settle, restore or delete); there the client PUTs a
manifest naming that layer. Whatever the registry answers:
- accepted: the manifest must pull completely after the janitor finishes (the re-check puts
  the held layer back);
- refused ("blob unknown": the layer is held or deleted): the client does what docker and
  skopeo do on a retry, HEAD (404 now), upload, PUT again, and that push must then pull
  completely too.
Every manifest the registry accepted pulls completely at the end, in every case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import janitor
import oci
import pytest
from registry import BACKENDS, Registry, pull, push, tag_link
from registry_janitor import gc
from stores import Store, store_factory

OLD = time.time() - 30 * 86400


def call(
    reg: Registry, method: str, path: str, body: bytes = b"", ctype: str = ""
) -> tuple[int, dict[str, str], bytes]:
    url = path if path.startswith("http") else f"http://{reg.host}{path}"
    req = urllib.request.Request(url, data=body or None, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def upload(reg: Registry, repo: str, layout: oci.Layout, digest: str) -> None:
    status, headers, _ = call(reg, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    location = headers["Location"]
    location = location if location.startswith("http") else f"http://{reg.host}{location}"
    data = (layout.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    sep = "&" if "?" in location else "?"
    status, _, body = call(
        reg, "PUT", f"{location}{sep}digest={digest}", data, "application/octet-stream"
    )
    assert status == 201, (status, body)


def push_manifest(
    reg: Registry, repo: str, tag: str, layout: oci.Layout, manifest: oci.Descriptor
) -> tuple[int, bytes]:
    raw = (
        layout.path / "blobs" / "sha256" / manifest["digest"].removeprefix("sha256:")
    ).read_bytes()
    status, _, body = call(reg, "PUT", f"/v2/{repo}/manifests/{tag}", raw, manifest["mediaType"])
    return status, body


Template = tuple[Registry, oci.Layout, dict[str, oci.Descriptor]]


@pytest.fixture(scope="module", params=BACKENDS)
def template(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Template:
    """r:old (base + layer A) and r:new (base + layer B), everything 30 days old; KEEP_LAST_N=1
    keeps r:new, so r:old's manifest, config and layer A are collection candidates."""
    backend = str(request.param)
    work = tmp_path_factory.mktemp(f"race-{backend}")
    layout = oci.Layout(work / "layout")
    base = layout.layer({"base": b"base"})
    layer_a = layout.layer({"a.bin": os.urandom(30_000)})
    old = layout.image([base, layer_a], label="old")
    new = layout.image([base, layout.layer({"b.bin": os.urandom(30_000)})], label="new")
    # What the client pushes during the sweep: layer A again under a fresh config.
    racing = layout.image([base, layer_a], label="racing")
    reg = Registry(work / "registry", store=store_factory(backend, request)("race"))
    reg.start()
    try:
        for tag, desc in (("old", old), ("new", new)):
            layout.tag(tag, desc)
            push(layout.path, tag, reg, f"r:{tag}")
    finally:
        reg.stop()
    reg.store.age_all(OLD, {tag_link("r", "new"): OLD + 10})
    return reg, layout, {"layer_a": layer_a, "racing": racing, "new": new}


def copy_of(store: Store, request: pytest.FixtureRequest) -> Store | None:
    """A new store of the same backend (None: the registry's own directory)."""
    return store_factory(store.backend, request)("race")


@pytest.mark.parametrize("phase", gc.PHASES)
def test_head_then_put_across_each_phase(
    template: Template, tmp_path: Path, phase: str, request: pytest.FixtureRequest
) -> None:
    original, layout, d = template
    reg = Registry(tmp_path / "registry", store=copy_of(original.store, request))
    original.store.copy_into(reg.store)
    reg.start()
    try:
        layer_a, racing = d["layer_a"]["digest"], d["racing"]
        status, _, _ = call(reg, "HEAD", f"/v2/r/blobs/{layer_a}")
        assert status == 200  # the client will not upload layer A
        config_digest = json.loads(
            (layout.path / "blobs" / "sha256" / racing["digest"][7:]).read_text()
        )["config"]["digest"]
        pauses = tmp_path / "pauses"
        pauses.mkdir()
        for other in gc.PHASES:
            if other != phase:
                (pauses / f"{other}.go").touch()
        env = janitor.janitor_env(reg, {gc.PAUSE_DIR_ENV: str(pauses)})
        cmd = [
            sys.executable, "-m", "registry_janitor", "sweep", "--run-once", "--json",
            *reg.janitor_args(), "--keep-last-n", "1", "--gc-settle", "2",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while not (pauses / f"{phase}.reached").exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"never reached {phase}"
                time.sleep(0.02)
            was_held = reg.store.is_dir(f".registry-janitor-held/blobs/{layer_a[7:]}")
            upload(reg, "r", layout, config_digest)  # new content: uploaded, young
            status, body = push_manifest(reg, "r", "racing", layout, racing)
            first = status
            if status != 201:  # refused cleanly: the client's retry uploads the layer
                assert status == 400 and b"BLOB_UNKNOWN" in body, (status, body)
                assert call(reg, "HEAD", f"/v2/r/blobs/{layer_a}")[0] == 404
                upload(reg, "r", layout, layer_a)
                status, body = push_manifest(reg, "r", "racing", layout, racing)
                assert status == 201, (status, body)
            (pauses / f"{phase}.go").touch()
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:  # a failed assertion above: never leave it paused
                proc.kill()
                proc.communicate()
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        print(f"{phase}: layer held at the PUT: {was_held}, first PUT {first}, "
              f"put back {sum(e.get('count', 0) for e in events if e['event'] == 'blobs_restored')}")  # fmt: skip
        if phase == "mark":  # not held yet: accepted, then held and put back by the re-check
            assert first == 201 and not was_held
            assert any(e["event"] == "blobs_restored" for e in events), out
        if phase in ("hold", "settle", "restore"):
            assert was_held and first == 400
        for ref in ("r:racing", "r:new"):
            result = pull(reg, ref, tmp_path / f"pulled-{ref}")
            assert result.returncode == 0, f"{phase}: {ref}: {result.stderr}"
        assert reg.store.files(".registry-janitor-held") == {}
    finally:
        reg.stop()


@pytest.mark.parametrize("when", ["before the sweep", "after the mark"])
def test_head_then_put_with_the_registry_log_is_never_refused(
    template: Template, tmp_path: Path, when: str, request: pytest.FixtureRequest
) -> None:
    """With the registry's log (JANITOR_REGISTRY_LOG, info level), the HEAD is seen: before
    the sweep, layer A is no candidate (touched within the grace); after the mark, the
    barrier before each hold batch drops it. Either way it is never held, and the manifest
    PUT that follows is accepted (without the log, the hold makes it fail: the test above)."""
    original, layout, d = template
    reg = Registry(tmp_path / "registry", store=copy_of(original.store, request), log_level="info")
    original.store.copy_into(reg.store)
    reg.start()
    try:
        layer_a, racing = d["layer_a"]["digest"], d["racing"]
        config_digest = json.loads(
            (layout.path / "blobs" / "sha256" / racing["digest"][7:]).read_text()
        )["config"]["digest"]
        if when == "before the sweep":
            assert call(reg, "HEAD", f"/v2/r/blobs/{layer_a}")[0] == 200
        pauses = tmp_path / "pauses"
        pauses.mkdir()
        for other in gc.PHASES:
            if other not in ("mark", "hold"):
                (pauses / f"{other}.go").touch()
        env = janitor.janitor_env(reg, {gc.PAUSE_DIR_ENV: str(pauses)})
        cmd = [
            sys.executable, "-m", "registry_janitor", "sweep", "--run-once", "--json",
            *reg.janitor_args(), "--keep-last-n", "1", "--gc-settle", "2",
            "--registry-log", str(reg.log),
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(pauses / "mark.reached", proc)
            if when == "after the mark":
                assert call(reg, "HEAD", f"/v2/r/blobs/{layer_a}")[0] == 200
            (pauses / "mark.go").touch()
            wait_for(pauses / "hold.reached", proc)
            assert not reg.store.is_dir(f".registry-janitor-held/blobs/{layer_a[7:]}")
            upload(reg, "r", layout, config_digest)
            status, body = push_manifest(reg, "r", "racing", layout, racing)
            assert status == 201, (status, body)
            (pauses / "hold.go").touch()
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        [summary] = [e for e in events if e["event"] == "summary"]
        assert summary["blobs_deleted"] > 0  # the rest of the garbage still goes
        for ref in ("r:racing", "r:new"):
            result = pull(reg, ref, tmp_path / f"pulled-{ref}")
            assert result.returncode == 0, f"{when}: {ref}: {result.stderr}"
    finally:
        reg.stop()


def test_nothing_to_collect_reads_the_log_without_a_gap(
    template: Template, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A sweep whose mark finds no candidate never opens the log for the barrier; the
    settle phase must not take that for a log it cannot follow (a fresh host warned of a
    gap at its first sweep)."""
    original, _, _ = template
    reg = Registry(tmp_path / "registry", store=copy_of(original.store, request), log_level="info")
    original.store.copy_into(reg.store)
    reg.start()
    try:
        result = janitor.run(
            reg, "--json", "--keep-last-n", "10", "--registry-log", str(reg.log),
            env={"GC_SETTLE": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        names = [e["event"] for e in janitor.events(result)]
        assert "summary" in names and "registry_log_gap" not in names, result.stdout
    finally:
        reg.stop()


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never reached {path.name}"
        time.sleep(0.02)
