"""The push registry's Prometheus metrics (registry_metrics_port, default 5090): they answer
on the host's loopback only, and carry every registry metric name the alert rules and the
dashboard may use (files/prometheus/metric-sources.yml, the Distribution group)."""

import os
from pathlib import Path

import testinfra.utils.ansible_runner
import yaml

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-default")

METRICS_URL = "http://127.0.0.1:5090/metrics"
COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"
SOURCES = Path(__file__).resolve().parents[3] / "files/prometheus/metric-sources.yml"


def distribution_names() -> set[str]:
    (group,) = [
        source
        for source in yaml.safe_load(SOURCES.read_text())["sources"]
        if source["name"].startswith("Distribution")
    ]
    names = set(group.get("counters", [])) | set(group.get("gauges", []))
    for base in group.get("histograms", []):
        names |= {base + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def test_registry_metrics_carry_the_names_the_rules_use(host):
    # A request through the API and one that reads the store, so every family has a sample.
    host.check_output("curl -fsS -o /dev/null http://127.0.0.1:5000/v2/")
    host.check_output("curl -fsS -o /dev/null http://127.0.0.1:5000/v2/_catalog")
    text = host.check_output(f"curl -fsS {METRICS_URL}")
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert distribution_names() - exported == set()
    assert 'registry_http_requests_total{code="200",handler="base",method="get"}' in text


def test_registry_metrics_are_published_on_loopback_only(host):
    cid = host.check_output(f"{COMPOSE} ps -q registry")
    published = host.check_output(f"docker port {cid} 5001").split()
    assert published == ["127.0.0.1:5090"]
