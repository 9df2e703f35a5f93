"""`prune` and `gc` as two processes, as the deployment runs them with the registry engine
(GC in a read-only window), and as an operator may run them with the janitor engine.

Registry engine: the `gc` process has read no manifest itself: the bytes it reports come from
the sizes the `prune` process left in the GC-pending mark. Janitor engine: the bytes are the
sizes of the `data` files it deleted. Either way the metrics count one sweep, not two.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import janitor
import oci
import pytest
from registry import pull, push, running, tag_link
from stores import Store

OLD = time.time() - 30 * 86400


def _samples(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.parametrize("engine", ["registry", "janitor"])
def test_gc_after_a_separate_prune_reports_the_bytes_and_counts_one_sweep(
    tmp_path: Path, engine: str, new_store: Callable[[str], Store | None]
) -> None:
    # Janitor engine: no grace, no settle (nothing pushes meanwhile); everything was pushed now.
    flags = ["--gc-engine", engine]
    if engine == "janitor":
        flags += ["--gc-grace", "0", "--revision-grace", "0", "--gc-settle", "0"]
    layout = oci.Layout(tmp_path / "layout")
    base = layout.layer({"etc/os-release": b"ID=test\n"})
    images = {
        f"t{i}": layout.image([base, layout.layer({f"{i}.bin": os.urandom(50_000)})], label=f"t{i}")
        for i in range(1, 4)
    }
    metrics = tmp_path / "janitor.prom"
    with running(tmp_path / "registry", store=new_store("prune-then-gc")) as reg:
        for tag, desc in images.items():
            layout.tag(tag, desc)
            push(layout.path, tag, reg, f"app:{tag}")
        reg.store.set_mtimes({tag_link("app", tag): OLD + i for i, tag in enumerate(images)})
        reg.age_revisions(OLD)
        gone = oci.blobs_of(layout, images["t1"]) - oci.blobs_of(layout, images["t2"])
        gone_bytes = sum(
            len((layout.path / "blobs" / "sha256" / d.removeprefix("sha256:")).read_bytes())
            for d in gone
        )

        pruned = janitor.run(
            reg, "--keep-last-n", "2", "--metrics-file", str(metrics), *flags, command="prune"
        )
        assert pruned.returncode == 0, pruned.stderr
        mark = ".registry-janitor.gc-pending"
        if engine == "registry":
            assert "garbage-collect next" in pruned.stderr
            carried = json.loads(reg.store.read(mark))["sizes"]
            assert gone <= set(carried), "the mark must carry the sizes of what GC will free"
        assert all(reg.blob_exists(d) for d in gone)  # nothing collected yet

        collected = janitor.run(reg, "--metrics-file", str(metrics), *flags, command="gc")
        assert collected.returncode == 0, collected.stderr
        last = collected.stderr.strip().splitlines()[-1]
        m = re.search(r"gc done: (\d+) blobs / ([\d.]+) KiB reclaimed, gc [\d.]+ s$", last)
        assert m, last
        assert "unknown size" not in last
        assert int(m[1]) == len(gone)
        assert abs(float(m[2]) * 1024 - gone_bytes) <= 0.05 * 1024 + 0.01 * gone_bytes
        assert not reg.store.is_file(mark)
        assert not any(reg.blob_exists(d) for d in gone)
        for tag in ("t2", "t3"):
            result = pull(reg, f"app:{tag}", tmp_path / f"pulled-{tag}")
            assert result.returncode == 0, result.stderr

    samples = _samples(metrics)
    assert samples['registry_janitor_sweeps_total{result="success"}'] == 1
    assert samples["registry_janitor_tags_deleted_total"] == 1
    assert samples["registry_janitor_blobs_deleted_total"] == len(gone)
    assert samples["registry_janitor_bytes_reclaimed_total"] == gone_bytes
    assert samples["registry_janitor_repositories"] == 1
    assert samples["registry_janitor_gc_duration_seconds"] > 0
