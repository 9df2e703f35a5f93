#!/usr/bin/env python3
"""Every metric name the alert rules and the Grafana dashboard use must exist.

Known names: the janitor's (METRICS and VERIFY_METRICS of
files/janitor/src/registry_janitor/metrics.py, read with ast), the share probe's (what
roles/storagebox/files/storagebox_probe.py's metrics_text writes), the recording rules' own,
and those of files/prometheus/metric-sources.yml (the registry's, node_exporter's,
Prometheus's, each with where it comes from). A name anywhere else fails, with the file and
the query that uses it: a rule or panel on a metric nobody exports never fires or shows
nothing, silently.

    scripts/check-metric-names.py [--rules FILE] [--dashboard FILE]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
JANITOR_METRICS = ROOT / "files/janitor/src/registry_janitor/metrics.py"
PROBE = ROOT / "roles/storagebox/files/storagebox_probe.py"
SOURCES = ROOT / "files/prometheus/metric-sources.yml"
RULES = ROOT / "files/prometheus/registry-cache.rules.yml"
DASHBOARD = ROOT / "files/grafana/registry-cache.json"

# PromQL words that are not metric names: keywords, and functions are followed by "(".
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}  # fmt: skip
IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?!\w)")


def janitor_names() -> set[str]:
    """The names metrics.py writes: its prefix P plus each key of METRICS and VERIFY_METRICS."""
    tree = ast.parse(JANITOR_METRICS.read_text())
    tables: dict[str, object] = {}
    target: ast.expr
    value: ast.expr
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("P", "METRICS", "VERIFY_METRICS"):
            tables[target.id] = ast.literal_eval(value)
    prefix = tables["P"]
    assert isinstance(prefix, str)
    names = set()
    for table in ("METRICS", "VERIFY_METRICS"):
        keys = tables[table]
        assert isinstance(keys, dict) and keys, f"{JANITOR_METRICS}: no {table} table"
        names |= {prefix + key for key in keys}
    return names


def probe_names() -> set[str]:
    """The names in the share probe's textfile, from its own metrics_text on a full report."""
    spec = importlib.util.spec_from_file_location("storagebox_probe", PROBE)
    assert spec and spec.loader
    probe = importlib.util.module_from_spec(spec)
    sys.modules["storagebox_probe"] = probe  # dataclasses look their module up
    spec.loader.exec_module(probe)
    report = probe.Report(
        path="/mnt/storagebox",
        checks=[probe.Check(name, probe.OK, "") for name in probe.CHECKS],
        case_sensitive=False,
        free_bytes=1,
        total_bytes=2,
        started=1.0,
        duration=1.0,
    )
    return set(re.findall(r"^# TYPE (\S+) ", probe.metrics_text(report), re.MULTILINE))


def listed_names() -> set[str]:
    names = set()
    for source in yaml.safe_load(SOURCES.read_text())["sources"]:
        assert source.get("source"), f"{SOURCES}: {source.get('name')} says not where it is from"
        names |= set(source.get("counters", [])) | set(source.get("gauges", []))
        for base in source.get("histograms", []):
            names |= {base + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def names_in(query: str) -> set[str]:
    """Metric names in a PromQL query (Grafana variables allowed)."""
    q = re.sub(r"\$\{[^}]*\}|\$\w+", "x", query)  # Grafana variables
    # label_values(metric, label) of a template variable: the metric only
    q = re.sub(r"label_values\(\s*([^,)]*?)\s*(,[^)]*)?\)", r"\1", q)
    q = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', q)  # strings
    q = re.sub(r"\{[^}]*\}", "", q)  # label matchers
    q = re.sub(r"\[[^\]]*\]", "", q)  # ranges, subqueries
    q = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", q)
    q = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", q)  # numbers
    names = set()
    for m in IDENT.finditer(q):
        word = m.group(1)
        if word.lower() in KEYWORDS or q[m.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def rule_queries(path: Path) -> tuple[list[tuple[str, str]], set[str]]:
    queries, recorded = [], set()
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            what = rule.get("alert") or rule.get("record")
            queries.append((f"{path.name}: {what}", rule["expr"]))
            if "record" in rule:
                recorded.add(rule["record"])
    return queries, recorded


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    board = json.loads(path.read_text())

    def panels(items: list[dict[str, object]]) -> Iterator[dict[str, object]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # type: ignore[arg-type]

    queries = []
    for panel in panels(board.get("panels", [])):
        for target in panel.get("targets", []):  # type: ignore[attr-defined]
            if target.get("expr"):
                queries.append((f"{path.name}: panel {panel.get('title')!r}", target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            text = query.get("query", "") if isinstance(query, dict) else query
            queries.append((f"{path.name}: variable {var.get('name')}", text))
    return queries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", type=Path, default=RULES)
    ap.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = ap.parse_args(argv)
    known = janitor_names() | probe_names() | listed_names()
    queries, recorded = rule_queries(args.rules)
    known |= recorded
    queries += dashboard_queries(args.dashboard)
    unknown = [
        (where, name, query)
        for where, query in queries
        for name in sorted(names_in(query))
        if name not in known
    ]
    for where, name, query in unknown:
        print(f"{where}: {name} is not a metric anything exports: {' '.join(query.split())}")
    if unknown:
        print(
            f"unknown metric names: {len(unknown)}. Known are the janitor's "
            f"({JANITOR_METRICS.relative_to(ROOT)}), the share probe's, the recording rules' "
            f"and those of {SOURCES.relative_to(ROOT)}",
            file=sys.stderr,
        )
        return 1
    used = {name for _, query in queries for name in names_in(query)}
    print(f"metric names: {len(queries)} queries use {len(used)} names, all exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
