#!/usr/bin/env python3
"""The alert rules' unit tests can fail: each alert is tested firing and not firing.

For every alert of files/prometheus/registry-cache.rules.yml this runs the promtool tests
(files/prometheus/tests) twice against a broken copy of the rules: once with the alert never
firing (its expression empty), once with it always firing (`vector(1)`, no `for`). Both must
make `promtool test rules` fail on that alert; an alert whose tests pass either way is named,
and the script fails. It also fails for an alert no test names.

    scripts/check-alert-tests.py [--promtool PATH]

Not part of `make lint` (3 minutes on the loaded 2-core VM): run it after changing a rule or
its tests.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "files/prometheus/registry-cache.rules.yml"
TESTS = ROOT / "files/prometheus/tests"

MUTATIONS = {
    # An empty result: the alert never fires, so a test expecting it must fail.
    "never fires": {"expr": "vector(1) == 0"},
    # One sample at once: the alert always fires, so a test expecting silence must fail.
    "always fires": {"expr": "vector(1)", "for": None},
}


def promtool_fails(promtool: str, work: Path, tests: list[Path], alert: str) -> bool:
    result = subprocess.run(
        [promtool, "test", "rules", *[str(work / "tests" / t.name) for t in tests]],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode != 0 and f"alertname: {alert}," in result.stdout + result.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--promtool", default=shutil.which("promtool") or "promtool")
    args = ap.parse_args(argv)
    rules = yaml.safe_load(RULES.read_text())
    tests = sorted(TESTS.glob("*.yml"))
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(TESTS, work / "tests")
        alerts = [
            (g, r)
            for g, group in enumerate(rules["groups"])
            for r, rule in enumerate(group["rules"])
        ]
        for g, r in alerts:
            alert = rules["groups"][g]["rules"][r].get("alert")
            if not alert:
                continue
            named = [t for t in tests if f"alertname: {alert}\n" in t.read_text()]
            if not named:
                problems.append(f"{alert}: no test names it")
                continue
            before = len(problems)
            for what, change in MUTATIONS.items():
                broken = copy.deepcopy(rules)
                rule = broken["groups"][g]["rules"][r]
                for key, value in change.items():
                    if value is None:
                        rule.pop(key, None)
                    else:
                        rule[key] = value
                (work / RULES.name).write_text(yaml.safe_dump(broken, sort_keys=False))
                if not promtool_fails(args.promtool, work, named, alert):
                    problems.append(f"{alert}: its tests pass when it {what}")
            if len(problems) == before:
                print(f"{alert}: its tests fail when it never fires and when it always fires")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
