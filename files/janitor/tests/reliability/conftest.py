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
from registry import BACKENDS
from stores import store_factory

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
    config.addinivalue_line(
        "markers", "backends(*names): run only on these store backends (default: all)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs the template store (or asks for `backend`) runs once per store
    backend. A module with `trials(backend)` runs those trial numbers per backend (fewer in a
    bucket, where each copy of the store costs more).

    Always over every backend and every trial number, the cases not wanted deselected at
    collection (`_unwanted`): parameters the same in every module let pytest run all the
    tests of one backend together, so the session's template store is built once per
    backend, not again each time the backend changes between two tests."""
    if "backend" not in metafunc.fixturenames:
        return
    metafunc.parametrize("backend", BACKENDS, indirect=True, scope="session")
    trials = getattr(metafunc.module, "trials", None)
    if "trial" in metafunc.fixturenames and trials is not None:
        metafunc.parametrize("trial", sorted({t for b in BACKENDS for t in trials(b)}))


def _unwanted(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "backend" not in callspec.params:
        return False
    backend = callspec.params["backend"]
    marker = item.get_closest_marker("backends")
    if marker is not None and backend not in marker.args:
        return True
    trials = getattr(getattr(item, "module", None), "trials", None)
    return (
        "trial" in callspec.params
        and trials is not None
        and (callspec.params["trial"] not in trials(backend))
    )


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    unwanted = [i for i in items if here in Path(i.path).resolve().parents and _unwanted(i)]
    if unwanted:
        config.hook.pytest_deselected(items=unwanted)
        items[:] = [i for i in items if i not in unwanted]
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            if MISSING and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session")
def template(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> crashstore.Template:
    """The store built once per backend by real pushes (see crashstore); tests copy it,
    never change it."""
    return crashstore.build(
        tmp_path_factory.mktemp(f"reliability-store-{backend}"), store_factory(backend, request)
    )


@pytest.fixture(scope="session")
def reference(
    template: crashstore.Template, tmp_path_factory: pytest.TempPathFactory
) -> crashstore.Reference:
    reg = template.copy_to(tmp_path_factory.mktemp(f"reliability-reference-{template.backend}"))
    t0 = time.monotonic()
    result = janitor.run(reg, *template.sweep_args, "--json")
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    events = janitor.events(result)
    counts: dict[str, int] = {}
    for e in events:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    gc = next(e for e in events if e["event"] == "gc_done")
    ref = crashstore.Reference(crashstore.snapshot(reg.store), counts, elapsed, gc["duration"])
    assert crashstore.visible_tags(reg.store) == template.kept_tags()
    for r, digest in template.kept.items():
        repo, tag = r.rsplit(":", 1)
        assert crashstore.tag_problems(reg.store, repo, tag, digest) == []
    assert crashstore.trash_entries(reg.store) == []
    return ref
