"""The registry's notifications as the roles deploy them: the registry notifies the janitor's
listener on the Compose network, the listener journals each event before it answers, and
a prune keeps a tag pulled within KEEP_PULLED_WITHIN from the journal alone; while the
registry still holds a pull it could not deliver, nothing is deleted on pull grounds."""

import json
import os
import shlex
import time

import testinfra.utils.ansible_runner
from registry_cache_testing import age_links, push_scratch_image, sh

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("registry-cache-default")

COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"
JOURNAL = "/var/lib/registry-cache/notifications/journal.jsonl"
DATA = "/var/lib/registry-cache/data"
REPO = "pulled/app"
DAY = 86400

# The journal's events, one JSON object per line after the header line.
JOURNAL_EVENTS = f"""
import json
for line in open({JOURNAL!r}):
    doc = json.loads(line)
    for event in doc.get("events", []):
        print(json.dumps(event))
"""


def journal_events(host) -> list[dict]:
    out = sh(host, f"python3 -c {shlex.quote(JOURNAL_EVENTS)}")
    return [json.loads(line) for line in out.splitlines()]


def wait_for_pull(host, tag: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for event in journal_events(host):
            if event["action"] == "pull" and event["target"].get("tag") == tag:
                return event
        assert time.monotonic() < deadline, f"no pull of {tag} in {JOURNAL}"
        time.sleep(1)


def tags(host) -> list[str]:
    body = sh(host, f"curl -fsS http://127.0.0.1:5000/v2/{REPO}/tags/list")
    return sorted(json.loads(body).get("tags") or [])


def prune(host, *env: str) -> list[dict]:
    """`registry-janitor prune` in the janitor's container as the units run it, with `env`
    (NAME=value) on top of janitor.env; its JSON events."""
    flags = " ".join(f"-e {shlex.quote(e)}" for e in env)
    out = sh(host, f"{COMPOSE} run --rm --no-deps -T {flags} janitor registry-janitor prune --json")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def deleted(events: list[dict]) -> set[str]:
    return {e["tag"] for e in events if e.get("event") == "tag_deleted"}


def test_the_listener_runs_on_the_project_network_only(host):
    cid = host.check_output(f"{COMPOSE} ps -q listener")
    state = json.loads(host.check_output(f"docker inspect {cid}"))[0]
    assert state["State"]["Health"]["Status"] == "healthy"
    # The image's EXPOSE 5000 shows, bound to nothing on the host.
    ports = state["NetworkSettings"]["Ports"]
    assert all(binding is None for binding in ports.values()), ports
    mode = host.file("/opt/registry-cache/notifications-token")
    assert mode.mode == 0o640 and mode.user == "root"
    assert host.file("/opt/registry-cache/config.yml").mode == 0o640


def test_the_listener_wants_the_registry_s_token(host):
    """From the registry's container: without the token 401; with the token of config.yml
    a body that is no envelope gets 400 (the token matched, the envelope did not)."""
    post = """
import sys, urllib.error, urllib.request
headers = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
if len(sys.argv) > 1:
    headers["Authorization"] = "Bearer " + sys.argv[1]
request = urllib.request.Request("http://listener:5080/events", b"{}", headers, method="POST")
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as error:
    print(error.code)
"""
    run = f"{COMPOSE} exec -T registry python3 -c {shlex.quote(post)}"
    assert sh(host, run).strip() == "401"
    config = host.file("/opt/registry-cache/config.yml").content_string
    token = host.file("/opt/registry-cache/notifications-token").content_string.strip()
    assert f"Authorization: [Bearer {token}]" in config
    assert sh(host, f"{run} {token}").strip() == "400"


def test_a_pulled_tag_survives_keep_last_n_1_and_a_queued_pull_deletes_nothing(host):
    for tag in ("p1", "p2", "p3", "p4"):
        push_scratch_image(host, f"127.0.0.1:5000/{REPO}:{tag}")
    deadline = time.monotonic() + 60
    while not any(
        e["action"] == "push" and e["target"].get("tag") == "p4" for e in journal_events(host)
    ):
        assert time.monotonic() < deadline, "no push of p4 in the journal"
        time.sleep(1)
    # The pushes two days back, and the pull record as if the listener and the janitor had
    # run for three (the first prune starts the record now).
    age_links(host, 2 * DAY, f"{DATA}/docker/registry/v2/repositories/{REPO}")
    prune(host, "KEEP_LAST_N=100", "KEEP_PULLED_WITHIN=1d")
    record = sh(host, f"find {DATA} -maxdepth 1 -name .registry-janitor.pulls").strip()
    assert record, f"no pull record in {DATA}"
    sh(
        host,
        "python3 -c "
        + shlex.quote(
            "import json, sys, time; p = sys.argv[1]; doc = json.load(open(p)); "
            f"doc['covered_since'] = time.time() - 3 * {DAY}; "
            "open(p, 'w').write(json.dumps(doc))"
        )
        + f" {record}",
    )
    rules = ("KEEP_LAST_N=1", "KEEP_PULLED_WITHIN=1d", "RUN_GC=false", "KEEP_MIN_AGE=0")
    pull_p2 = (
        "curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'"
        f" http://127.0.0.1:5000/v2/{REPO}/manifests/p2"
    )

    # The listener is down: the registry keeps p2's pull queued, the janitor sees it there
    # (the registry's debug server) and deletes nothing on pull grounds.
    sh(host, f"{COMPOSE} stop listener")
    try:
        sh(host, pull_p2)
        held = prune(host, *rules)
        assert deleted(held) == set(), held
        [short] = [e for e in held if e.get("event") == "pull_record_short"]
        assert "not delivered yet" in short["message"], short
        assert tags(host) == ["p1", "p2", "p3", "p4"]
    finally:
        sh(host, f"{COMPOSE} start listener")

    # Delivered (the registry retries): p2 stays for its pull, p4 as the newest.
    got = wait_for_pull(host, "p2")
    assert got["request"]["method"] == "GET" and "/manifests/" in got["target"]["url"]
    events = prune(host, *rules)
    assert deleted(events) == {"p1", "p3"}, events
    assert not any(e.get("event") == "pull_record_short" for e in events), events
    assert tags(host) == ["p2", "p4"]
    # Blob requests are not notified: the journal holds manifest events only.
    assert all("/manifests/" in e["target"]["url"] for e in journal_events(host))
