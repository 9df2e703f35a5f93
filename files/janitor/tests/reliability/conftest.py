"""Reliability tests, janitor level: SIGKILL trials, two sweeps at once, bad input.

They reuse the integration helpers (a real `docker-registry` 2.8.x on 127.0.0.1, skopeo,
OCI layouts built in Python), so the same rule applies: skipped with the reason when a tool
is missing, failed instead when the CI environment variable is set.
Run them alone with `python -m pytest -m reliability files/janitor/tests`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)

import crashstore
import janitor

# The integration suite's rule, reused: which tool is missing, and the autouse fixture that
# fails (rather than skips) under CI.
_spec = importlib.util.spec_from_file_location(
    "integration_conftest", Path(INTEGRATION) / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)
MISSING, REASON = _integration.MISSING, _integration.REASON
_tools_present = _integration._tools_present


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: fault, concurrency and bad-input trials, slow-ish"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            if MISSING and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> crashstore.Template:
    """The store built once by real pushes (see crashstore); tests copy it, never change it."""
    return crashstore.build(tmp_path_factory.mktemp("reliability-store"))


@pytest.fixture(scope="session")
def reference(
    template: crashstore.Template, tmp_path_factory: pytest.TempPathFactory
) -> crashstore.Reference:
    reg = template.copy_to(tmp_path_factory.mktemp("reliability-reference"))
    t0 = time.monotonic()
    result = janitor.run(reg, *template.sweep_args, "--json")
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    events = janitor.events(result)
    counts: dict[str, int] = {}
    for e in events:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    gc = next(e for e in events if e["event"] == "gc_done")
    ref = crashstore.Reference(crashstore.snapshot(reg.root), counts, elapsed, gc["duration"])
    assert crashstore.visible_tags(reg.root) == template.kept_tags()
    for r, digest in template.kept.items():
        repo, tag = r.rsplit(":", 1)
        assert crashstore.tag_problems(reg.root, repo, tag, digest) == []
    assert crashstore.trash_entries(reg.root) == []
    return ref
