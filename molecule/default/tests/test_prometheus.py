"""A real Prometheus scrapes the deployed host, and every metric name that the alert rules
and the Grafana dashboard use returns data from it.

Debian's Prometheus and node_exporter binaries (scripts/install-promtool.sh puts them on
the machine, from the packages Debian 12 ships) are copied into the test host and run there,
because the registry's and the mirror's metrics ports are on the host's loopback only. The
scrape configuration is the one docs/monitoring.md tells users to write: node_exporter with
its textfile collector on registry_metrics_dir, the push registry as job "registry-cache",
the mirror as job "registry-cache-mirror" with a `mirror` label. Then a push, pulls through
the mirror (a miss, then a hit), a sweep and a verify run, and queries of the HTTP API.

The metric names come from the rules file and the dashboard through the same parser `make
lint` uses (scripts/check-metric-names.py): a rule or panel naming a metric nothing
exports finds no data here, and test_a_misnamed_metric_is_caught proves it does.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
import yaml
from registry_cache_testing import push_scratch_image, sh

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-default")

ROOT = Path(__file__).resolve().parents[3]
HOST = "registry-cache-default"  # the container's name (molecule's docker driver)
WORK = "/var/tmp/prometheus-test"
PROMETHEUS = "http://127.0.0.1:9090"
IMAGE = "obs/app:v1"
# The recording rule's series exists only while the Storage Box fills (a negative slope of
# its free bytes over 6 hours): not within a test. Its expression is checked by the rules
# API (health "ok") and its input names by the name check.
ONLY_WHILE_FILLING = {"registry_cache:storagebox_hours_until_full"}

SCRAPE_CONFIG = f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {WORK}/registry-cache.rules.yml
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:9100"]
        labels: {{instance: {HOST}}}
  - job_name: registry-cache
    static_configs:
      - targets: ["127.0.0.1:5090"]
        labels: {{instance: {HOST}}}
  - job_name: registry-cache-mirror
    static_configs:
      - targets: ["127.0.0.1:5093"]
        labels: {{instance: {HOST}, mirror: self}}
"""


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_metric_names", ROOT / "scripts/check-metric-names.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_metric_names"] = module
    spec.loader.exec_module(module)
    return module


check = _checker()


def used_names(rules: Path, dashboard: Path) -> set[str]:
    """Every metric name the rules and the dashboard query, as `make lint` reads them."""
    queries, recorded = check.rule_queries(rules)
    queries += check.dashboard_queries(dashboard)
    return {name for _, query in queries for name in check.names_in(query)} - (
        recorded & ONLY_WHILE_FILLING
    )


def query(host, promql: str) -> list[dict]:
    out = host.check_output(
        f"curl -fsS {PROMETHEUS}/api/v1/query --data-urlencode query={quote(promql)}"
    )
    body = json.loads(out)
    assert body["status"] == "success", body
    return body["data"]["result"]


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def without_data(host, names: set[str]) -> set[str]:
    """The names of `names` no series of which Prometheus has now."""
    pattern = "|".join(sorted(names))
    found = query(host, f'count by (__name__) ({{__name__=~"{pattern}"}})')
    return names - {r["metric"]["__name__"] for r in found}


@pytest.fixture(scope="module")
def prometheus(host):
    """Prometheus and node_exporter running on the host, the traffic done, every scrape
    target up; yields the host."""
    started = time.monotonic()
    for binary in ("prometheus", "prometheus-node-exporter"):
        path = shutil.which(binary)
        assert path, f"{binary} is missing on this machine: run scripts/install-promtool.sh"
        subprocess.run(["docker", "cp", path, f"{HOST}:/usr/local/bin/{binary}"], check=True)
    host.check_output(f"rm -rf {WORK} && mkdir -p {WORK}/data")
    rules = (ROOT / "files/prometheus/registry-cache.rules.yml").read_text()
    host.check_output(f"cat > {WORK}/registry-cache.rules.yml <<'EOF'\n{rules}\nEOF")
    host.check_output(f"cat > {WORK}/prometheus.yml <<'EOF'\n{SCRAPE_CONFIG}\nEOF")
    # Transient units, so systemd stops them at the end (and a rerun starts them anew).
    host.run("systemctl stop test-node-exporter test-prometheus")
    host.run("systemctl reset-failed test-node-exporter test-prometheus")
    host.check_output(
        "systemd-run --unit=test-node-exporter /usr/local/bin/prometheus-node-exporter"
        " --web.listen-address=127.0.0.1:9100"
        " --collector.textfile.directory=/var/lib/registry-cache/metrics"
    )
    host.check_output(
        "systemd-run --unit=test-prometheus /usr/local/bin/prometheus"
        f" --config.file={WORK}/prometheus.yml --storage.tsdb.path={WORK}/data"
        " --web.listen-address=127.0.0.1:9090"
    )
    # Traffic that gives every family a sample: a push (uploads, manifest PUT, storage
    # actions), pulls through the mirror (a miss, then a hit), a sweep and a verify run
    # (the janitor's two textfiles).
    # The share probe writes its textfile only for a mounted share (the test kernel has no
    # CIFS, so the role's run skipped it): the Storage Box folder bound onto itself is a
    # mount point with the same content, and the deployed probe runs as the role runs it.
    bound = host.run("mountpoint -q /mnt/storagebox").rc != 0
    sh(
        host,
        "mountpoint -q /mnt/storagebox || mount --bind /mnt/storagebox /mnt/storagebox\n"
        "/usr/local/libexec/registry-cache/storagebox-probe /mnt/storagebox --require-mount"
        " --json --results /var/lib/registry-cache/storagebox-probe.json"
        " --metrics /var/lib/registry-cache/metrics/storagebox_probe.prom || test $? = 1",
    )
    push_scratch_image(host, f"127.0.0.1:5000/{IMAGE}")
    sh(
        host,
        f"""
set -eu
for _ in 1 2; do
    docker pull -q 127.0.0.1:5003/{IMAGE} >/dev/null
    docker image rm 127.0.0.1:5003/{IMAGE} >/dev/null
done
curl -fsS -o /dev/null http://127.0.0.1:5000/v2/_catalog
systemctl start registry-janitor.service registry-janitor-verify.service
""",
    )
    # Until a scrape after the sweep has happened on every target.
    deadline = time.monotonic() + 60
    while True:
        up = {r["metric"]["job"]: r["value"][1] for r in query(host, "up")} if _ready(host) else {}
        if up == {"node": "1", "registry-cache": "1", "registry-cache-mirror": "1"}:
            # mirror-start copies the proxy's counters every 10 s.
            hits = query(host, 'registry_mirror_proxy_requests_total{kind="manifests"} >= 2')
            if hits and not without_data(
                host, {"registry_janitor_verify_last_run_timestamp_seconds"}
            ):
                break
        assert time.monotonic() < deadline, f"scrape targets not all up after 60 s: {up}"
        time.sleep(1)
    time.sleep(2)  # a scrape or two more: the counters' rate() needs two samples
    print(f"prometheus ready in {time.monotonic() - started:.1f} s")
    yield host
    host.run("systemctl stop test-node-exporter test-prometheus")
    if bound:
        host.run("umount /mnt/storagebox")


def _ready(host) -> bool:
    return host.run(f"curl -fsS -o /dev/null {PROMETHEUS}/-/ready").rc == 0


def test_every_metric_name_of_the_rules_and_the_dashboard_has_data(prometheus):
    names = used_names(
        ROOT / "files/prometheus/registry-cache.rules.yml",
        ROOT / "files/grafana/registry-cache.json",
    )
    assert len(names) > 30  # the parser found the queries
    assert without_data(prometheus, names) == set()


def test_a_misnamed_metric_is_caught(prometheus, tmp_path):
    """The check above is not vacuous: one rule and one panel naming a metric that does not
    exist (a typo of a real one) are reported, and nothing else is."""
    rules = (ROOT / "files/prometheus/registry-cache.rules.yml").read_text()
    assert "expr: registry_janitor_gc_ok == 0" in rules
    (tmp_path / "rules.yml").write_text(
        rules.replace("expr: registry_janitor_gc_ok == 0", "expr: registry_janitor_gc_okay == 0")
    )
    board = json.loads((ROOT / "files/grafana/registry-cache.json").read_text())
    panel = next(p for p in board["panels"] if p.get("title") == "Broken tags")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace(
        "registry_janitor_broken_tags", "registry_janitor_broken_tag"
    )
    (tmp_path / "board.json").write_text(json.dumps(board))
    names = used_names(tmp_path / "rules.yml", tmp_path / "board.json")
    assert without_data(prometheus, names) == {
        "registry_janitor_gc_okay",
        "registry_janitor_broken_tag",
    }


def test_every_rule_evaluates_on_the_real_series(prometheus):
    """Prometheus loaded the rules file and evaluated every rule without an error (a label
    matcher or function a real series breaks would show here, not in promtool's tests)."""
    deadline = time.monotonic() + 20
    while True:
        body = json.loads(prometheus.check_output(f"curl -fsS {PROMETHEUS}/api/v1/rules"))
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, "rules not evaluated after 20 s"
        time.sleep(1)
    written = yaml.safe_load((ROOT / "files/prometheus/registry-cache.rules.yml").read_text())
    assert len(rules) == sum(len(g["rules"]) for g in written["groups"])
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_the_sweep_reports_its_gc_outcome(prometheus):
    """The deployed sweep collected: registry_janitor_gc_ok says so with its reason, and the
    alert on a GC that fails closed is not pending."""
    [sample] = query(prometheus, "registry_janitor_gc_ok")
    assert sample["metric"]["reason"] == "collected" and sample["value"][1] == "1"
    assert query(prometheus, 'ALERTS{alertname="RegistryJanitorGCFailingClosed"}') == []


def test_the_mirror_pulls_show_a_miss_and_a_hit(prometheus):
    """Two pulls of one image through the mirror: the first fetched the manifest from the
    upstream (a miss), the second served it from the mirror's store. (Distribution 2.8.3
    counts no blob misses: docs/monitoring.md.)"""
    counters = {
        r["metric"]["__name__"]: float(r["value"][1])
        for r in query(
            prometheus,
            '{__name__=~"registry_mirror_proxy_(requests|misses)_total",'
            'mirror="self",kind="manifests"}',
        )
    }
    assert counters["registry_mirror_proxy_misses_total"] >= 1
    assert (
        counters["registry_mirror_proxy_requests_total"]
        > counters["registry_mirror_proxy_misses_total"]
    )
