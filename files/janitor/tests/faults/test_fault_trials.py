"""A few fault trials per backend (trials.py; `make fault-trials` runs 500 per backend): the
faults issue 21 names (SCENARIOS) and random ones. Each asserts that no blob a served tag
needs was deleted, nothing was left held, and a fault that changed the outcome was reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trials

SEED = int(os.environ.get("FAULT_TRIALS_SEED", "7"))
# Random trials per backend here; a bucket costs more (uploads, boto3's retry back-off).
RANDOM = {"filesystem": range(4), "s3": range(1)}
# Found on the code this branch started from (issue 21), being fixed on main: the run deletes
# blobs of served tags, or leaves blobs held.
KNOWN = {
    ("filesystem", "unlistable-namespace"): "an unlistable namespace is skipped, its blobs deleted",
    ("s3", "unlistable-namespace"): "a prefix listing answering 503 is skipped, its blobs deleted",
    ("filesystem", "hold-fails"): "an error while holding aborts GC with blobs left held",
    ("s3", "hold-fails"): "an error while holding aborts GC with blobs left held",
    ("s3", "truncated-listing"): "IsTruncated without a token is taken as the whole listing",
}
SCENARIO_CASES = [
    pytest.param(
        backend, name,
        marks=[pytest.mark.xfail(reason=KNOWN[(backend, name)], strict=False)]
        if (backend, name) in KNOWN else [],
    )
    for name, per in sorted(trials.SCENARIOS.items())
    for backend in sorted(per)
]  # fmt: skip


def check(result: trials.Result) -> None:
    print(result.line())
    assert not result.wrongly_deleted, f"blobs a served tag needs were deleted: {result.line()}"
    assert not result.unlinked, f"revisions a served tag needs were unlinked: {result.line()}"
    assert not result.left_held, f"blobs left in the hold: {result.line()}"
    assert not result.unreported_change, f"an outcome changed without a report: {result.line()}"


def backend_fixture(request: pytest.FixtureRequest, backend: str) -> object:
    return request.getfixturevalue("fs_trials" if backend == "filesystem" else "s3_trials")


@pytest.mark.parametrize(("backend", "scenario"), SCENARIO_CASES)
def test_named_fault(
    backend: str, scenario: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    r = trials.run_trial(
        backend_fixture(request, backend), 0, SEED, tmp_path, trials.SCENARIOS[scenario][backend]
    )
    assert r.fired, f"{scenario}: the fault never fired: {r.line()}"
    check(r)


@pytest.mark.parametrize(
    ("backend", "trial"), [(b, t) for b, numbers in sorted(RANDOM.items()) for t in numbers]
)
def test_random_faults(
    backend: str, trial: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    check(trials.run_trial(backend_fixture(request, backend), trial, SEED, tmp_path))
