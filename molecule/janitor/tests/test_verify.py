"""Blob verification as deployed: registry-janitor-verify.timer and .service on the host.

A layer of a pushed image is damaged in the store (a byte flipped, as SMB shares have been
seen to store blobs); `systemctl start registry-janitor-verify.service` fails, its journal
names the blob and the tag, the blob is in the quarantine; pushing the same image again heals
it: it pulls, and the next verify run succeeds. On a host of its own (group verify): the
other files' tests run at the same time on theirs, and expect stores nothing else changes;
test_image_refresh.py recreates this host's services, so the two files take turns.
"""

from __future__ import annotations

import os

import testinfra.utils.ansible_runner
from registry_cache_testing import blob_data, journal_cursor, one_file_at_a_time, sh, unit_journal
from test_janitor import REG, SKOPEO, V2, WORK, parse_prometheus_text, pull, push_oci

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("verify")

DATA = V2.removesuffix("/docker/registry/v2")
METRICS = "/var/lib/registry-cache/metrics/registry_janitor_verify.prom"


def verify_by_service(host) -> tuple[int, str]:
    cursor = journal_cursor(host)
    result = host.run("systemctl start registry-janitor-verify.service")
    return result.rc, unit_journal(host, "registry-janitor-verify.service", after_cursor=cursor)


def test_verify_timer_is_enabled_and_has_not_fired(host):
    """Enabled as in production; its calendar keeps it out of this run."""
    timer = host.service("registry-janitor-verify.timer")
    assert timer.is_enabled and timer.is_running
    last = host.check_output(
        "systemctl show registry-janitor-verify.timer -p LastTriggerUSec --value"
    )
    assert last in ("", "n/a", "0")
    env = host.file("/opt/registry-cache/janitor.env").content_string
    assert "VERIFY_BUDGET='10GiB,10m'" in env and "VERIFY_INTERVAL='30d'" in env


def test_damaged_layer_is_found_quarantined_and_healed_by_a_push(host):
    with one_file_at_a_time(host.backend.get_hostname()):
        repo = "verify/app"
        info = push_oci(host, repo, "v1", shared="verify-base")
        rc, log = verify_by_service(host)
        assert rc == 0, log
        assert "0 corrupt" in log

        layer = max(
            (d for d in info["unique"] if d != info["digest"]), key=lambda d: info["blobs"][d]
        )
        path = blob_data(V2, layer)
        # Damaged as at its write: the mtime stays the push's, moved an hour back (verify never
        # moves a blob whose data changed within the last 10 minutes: a write in progress).
        sh(
            host,
            "python3 -c \"import os, sys, time; p = sys.argv[1]; b = bytearray(open(p, 'rb').read());"
            " b[100] ^= 1; open(p, 'wb').write(b); t = time.time() - 3600; os.utime(p, (t, t))\""
            f" {path}",
        )
        rc, log = verify_by_service(host)
        assert rc != 0, log
        assert f"CORRUPT blob {layer}" in log and f"{repo}:v1" in log, log
        assert not host.file(path).exists
        entries = sh(host, f"ls {DATA}/.registry-janitor-quarantine").split()
        assert any(e.startswith(layer.removeprefix("sha256:")) for e in entries), entries

        # The same image pushed again: the registry uploads the layer it no longer has.
        layout = f"{WORK}/oci/{repo.replace('/', '_')}-v1"
        sh(
            host,
            f"{SKOPEO} copy -q --all --preserve-digests --dest-tls-verify=false "
            f"oci:{layout}:v1 docker://{REG}/{repo}:v1",
        )
        assert pull(host, repo, "v1").rc == 0
        rc, log = verify_by_service(host)
        assert rc == 0, log

        samples = parse_prometheus_text(host.file(METRICS).content_string)
        assert samples[("registry_janitor_blobs_corrupt_total", "")] == 1
        assert samples[("registry_janitor_broken_tags", "")] == 0
        assert samples[("registry_janitor_blobs_quarantined", "")] == 1
        assert samples[("registry_janitor_blobs_verified_total", "")] > 0
        assert samples[("registry_janitor_verify_last_run_success", "")] == 1
