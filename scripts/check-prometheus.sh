#!/usr/bin/env bash
# `make lint`'s part for monitoring (docs/monitoring.md): the alert rules are valid, their unit
# tests pass, and every metric name the rules and the Grafana dashboard use is one that
# something really exports (scripts/check-metric-names.py).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v promtool >/dev/null 2>&1 || {
    echo "lint: promtool is missing: run scripts/install-promtool.sh (or make deps)" >&2
    exit 1
}
promtool check rules files/prometheus/registry-cache.rules.yml
promtool test rules files/prometheus/tests/*.yml
"${PYTHON:-.venv/bin/python}" scripts/check-metric-names.py
