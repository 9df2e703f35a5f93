"""The janitor's HTML report on the deployed host: each sweep writes it beside the metrics,
and playbooks/report.yml (what `make report` runs for the local host) writes it anew and
fetches it. The page lists the repositories the registry's catalog has."""

import json
import os
import re
import subprocess
from pathlib import Path

import testinfra.utils.ansible_runner
from registry_cache_testing import controller_tool, push_scratch_image

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-default")

HOST = "registry-cache-default"
PAGE = "/var/lib/registry-cache/metrics/registry_janitor_report.html"


def push(host, repo: str) -> None:
    push_scratch_image(host, f"127.0.0.1:5000/{repo}:v1")


def repositories(page: str) -> set[str]:
    return set(re.findall(r'<tr data-repository="([^"]+)"><td class="name">', page))


def test_each_sweep_writes_the_report_beside_the_metrics(host):
    push(host, "report/swept")
    host.check_output("systemctl start registry-janitor.service")
    page = host.file(PAGE)
    assert page.mode == 0o644  # node_exporter's directory, readable like the textfiles
    assert "report/swept" in repositories(page.content_string)
    history = host.file(PAGE.replace("_report.html", "_history.jsonl")).content_string
    last = json.loads(history.splitlines()[-1])
    assert last["gc_ran"] and last["gc_reason"] == "collected"


def test_the_report_playbook_fetches_a_fresh_page(host, tmp_path: Path):
    push(host, "report/fetched")
    project = os.environ.get("MOLECULE_PROJECT_DIRECTORY", str(Path(__file__).parents[3]))
    result = subprocess.run(
        [
            controller_tool("ansible-playbook"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit",
            HOST,
            "playbooks/report.yml",
            "-e",
            f"report_dir={tmp_path}",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / f"registry-cache-report-{HOST}.html").read_text()
    catalog = json.loads(host.check_output("curl -fsS http://127.0.0.1:5000/v2/_catalog"))
    assert repositories(page) == set(catalog["repositories"])
    assert "report/fetched" in repositories(page)
