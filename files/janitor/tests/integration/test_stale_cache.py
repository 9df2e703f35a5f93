"""After GC the serving registry must not believe deleted blobs exist.

The shipped registry config has no `storage.cache.blobdescriptor`, so a layer GC deleted is
uploaded again when an image is pushed again, and the image pulls. The second test documents
upstream behaviour (distribution#1803, #2094, #3743, #4569) that is the reason for that
choice: with `blobdescriptor: inmemory` the very same sequence leaves an image that the
registry accepts but cannot serve.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import janitor
import oci
from registry import Registry, pull, push, running
from stores import Store


@dataclass
class Outcome:
    registry: Registry
    layer: str  # the layer only the pruned image had
    sweep: subprocess.CompletedProcess[str]


def push_gc_repush(work: Path, stack: ExitStack, store: Store | None, *, cache: bool) -> Outcome:
    layout = oci.Layout(work / "layout")
    base = layout.layer({"base": b"b"})
    unique = layout.layer({"unique.txt": b"only in v1"})
    layout.tag("v1", layout.image([base, unique], label="v1"))
    layout.tag("v2", layout.image([base, layout.layer({"v2": b"v2"})], label="v2"))
    reg = stack.enter_context(running(work / "registry", blobdescriptor_cache=cache, store=store))
    push(layout.path, "v1", reg, "stale:v1")
    push(layout.path, "v2", reg, "stale:v2")  # newer: v1 is the one retention drops
    reg.age_revisions(time.time() - 7200)
    reg.age_blobs(time.time() - 3 * 3600)  # past the garbage collection grace period
    # GC in another process while the registry keeps serving, as the deployment does.
    sweep = janitor.run(reg, "--keep-last-n", "1")
    assert sweep.returncode == 0, sweep.stderr
    assert reg.tags("stale") == ["v2"]
    assert not reg.blob_exists(unique["digest"]), "GC should have deleted v1's own layer"
    push(layout.path, "v1", reg, "stale:v1")  # CI pushes the same image again
    return Outcome(reg, unique["digest"], sweep)


def test_shipped_config_repush_after_gc_pulls_completely(
    tmp_path: Path, new_store: Callable[[str], Store | None]
) -> None:
    with ExitStack() as stack:
        out = push_gc_repush(tmp_path, stack, new_store("stale"), cache=False)
        assert out.registry.blob_exists(out.layer), "the re-push must upload the layer again"
        result = pull(out.registry, "stale:v1", tmp_path / "pulled")
        assert result.returncode == 0, result.stderr
        assert "blobdescriptor" not in out.sweep.stderr


def test_upstream_blobdescriptor_cache_serves_a_broken_image_after_gc(
    tmp_path: Path, new_store: Callable[[str], Store | None]
) -> None:
    """Documents upstream behaviour; the janitor warns when it sees this cache enabled."""
    with ExitStack() as stack:
        out = push_gc_repush(tmp_path, stack, new_store("stale-cache"), cache=True)
        # The registry accepted the push without the layer: its cache said "exists".
        assert out.registry.tags("stale") == ["v1", "v2"]
        assert not out.registry.blob_exists(out.layer)
        result = pull(out.registry, "stale:v1", tmp_path / "pulled")
        assert result.returncode != 0
        assert "enables storage.cache.blobdescriptor" in out.sweep.stderr
