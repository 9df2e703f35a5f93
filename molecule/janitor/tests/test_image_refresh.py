"""Debian's updates reach the registry image: registry-cache-image-refresh.service as its
timer starts it, on the verify host (its test file and this one take turns).

The image the host runs is made to look outdated the one way that needs no older package on
the mirror: its dpkg database says ca-certificates is at an older version. The service asks
the Debian mirror in a throwaway container, sees the update, rebuilds the image without
cache, finds the package list changed and recreates the services: the registry then runs
the rebuilt image with the mirror's ca-certificates. A second run finds nothing to do and
recreates nothing.
"""

from __future__ import annotations

import os
import shlex

import testinfra.utils.ansible_runner
from registry_cache_testing import journal_cursor, one_file_at_a_time, sh, unit_journal

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("verify")

COMPOSE = "docker compose -p registry-cache -f /opt/registry-cache/compose.yml"
UNIT = "registry-cache-image-refresh.service"
FORMAT = "{{.State.StartedAt}} {{.Image}}"


def registry_container(host) -> tuple[str, str]:
    """(started at, image id) of the push registry's container."""
    cid = sh(host, f"{COMPOSE} ps -q registry").strip()
    started, image = sh(host, f"docker inspect --format '{FORMAT}' {cid}").split()
    return started, image


def refresh_by_service(host) -> str:
    cursor = journal_cursor(host)
    result = host.run(f"systemctl start {UNIT}")
    log = unit_journal(host, UNIT, after_cursor=cursor)
    assert result.rc == 0, f"{result.stderr}\n{log}"
    return log


def test_image_refresh_timer_is_enabled(host):
    timer = host.service("registry-cache-image-refresh.timer")
    assert timer.is_enabled and timer.is_running


def test_an_outdated_package_is_rebuilt_and_the_services_recreated(host):
    with one_file_at_a_time(host.backend.get_hostname()):
        tag = sh(
            host, f"{COMPOSE} config --images | grep registry-cache/registry | head -n 1"
        ).strip()
        # Whatever Debian published since the image was built comes in first.
        refresh_by_service(host)
        user = sh(host, f"docker image inspect --format '{{{{.Config.User}}}}' {tag}").strip()
        outdated = (
            f"FROM {tag}\nUSER 0\nRUN sed -i '/^Package: ca-certificates$/,/^$/ "
            f"s/^Version: .*/Version: 20000101/' /var/lib/dpkg/status\nUSER {user}\n"
        )
        sh(
            host,
            f"printf %s {shlex.quote(outdated)} | docker build --quiet --network none -t {tag} -",
        )
        # The services run the outdated image, as after a build long ago.
        sh(host, "systemctl reload registry-cache.service")
        before = registry_container(host)

        log = refresh_by_service(host)
        assert "ca-certificates" in log, log
        assert "recreating the services" in log and "rebuilt: " in log, log
        after = registry_container(host)
        assert after[0] > before[0] and after[1] != before[1], (before, after, log)
        assert after[1] == sh(host, f"docker image inspect --format '{{{{.Id}}}}' {tag}").strip()
        version = sh(
            host, f"{COMPOSE} exec -T registry dpkg-query -W -f '${{Version}}' ca-certificates"
        )
        assert version != "20000101"
        sh(host, "curl -sf http://127.0.0.1:5000/v2/ >/dev/null")

        log = refresh_by_service(host)
        assert log.strip().endswith("up to date") or "up to date" in log, log
        assert registry_container(host) == after
