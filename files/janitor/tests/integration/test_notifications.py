"""Retention by pull from the registry's notifications alone: the real registry sends them to
`registry-janitor listen` (a subprocess, as deployed), skopeo pushes and pulls, and a prune
with no registry log keeps what the journal says was pulled. A registry restart between two
runs is a gap: nothing is deleted on pull grounds for the time it does not cover.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import janitor
import pytest
from registry import Registry, pull
from registry_janitor.pulls import PULLS_FILE
from servers import free_port
from test_pull_retention import deleted, head_manifest, push_old_tags

DAY = 86400
TOKEN = "integration-token-0123456789"
POLICY = '[[rules]]\nmatch = "app"\nkeep_pulled_within = "1d"\n'


@dataclass
class Setup:
    registry: Registry
    journal: Path
    work: Path
    listener: Listener

    def events(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        lines = [json.loads(x) for x in self.journal.read_text().splitlines()]
        return [e for line in lines if "events" in line for e in line["events"]]

    def wait_for(self, found: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Delivery is asynchronous: the registry queues events and sends them in order."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            hits = [e for e in self.events() if found(e)]
            if hits:
                return hits[-1]
            time.sleep(0.1)
        raise AssertionError(f"no {what} in the journal: {self.events()}")

    def prune(self, *args: str) -> list[dict[str, Any]]:
        policy = self.work / "policy.toml"
        policy.write_text(POLICY)
        result = janitor.run(
            self.registry,
            "--json",
            "--keep-last-n", "1",
            "--policy-file", str(policy),
            "--notifications-journal", str(self.journal),
            *args,
            command="prune",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        return janitor.events(result)

    def prune_after_delivery(self) -> list[dict[str, Any]]:
        """A prune that reads the journal only once the registry has delivered everything."""
        return self.prune("--notifications-pending-urls", self.registry.debug_vars)


class Listener:
    """`registry-janitor listen` as deployed: a subprocess of the installed package."""

    def __init__(self, work: Path, port: int, journal: Path) -> None:
        self.work, self.port, self.journal = work, port, journal
        self.token = work / "token"
        self.token.write_text(TOKEN + "\n")
        self.token.chmod(0o600)
        self.data = work / "listener-data"
        self.data.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.work / "listener.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "registry_janitor", "listen",
                    "--data-dir", str(self.data),
                    "--notifications-journal", str(self.journal),
                    "--listen-address", f"127.0.0.1:{self.port}",
                    "--listen-token-file", str(self.token),
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            assert self.proc.poll() is None, (self.work / "listener.log").read_text()
            assert time.monotonic() < deadline, "the listener did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """app:b0, b1, b2 pushed five days ago through a registry that notifies the listener
    (its log at warn level: no request lines), and a first prune that starts the record."""
    port = free_port()
    journal = tmp_path / "notifications.jsonl"
    listener = Listener(tmp_path, port, journal)
    listener.start()
    reg = Registry(tmp_path / "registry", notify=(f"http://127.0.0.1:{port}/events", TOKEN))
    reg.start()
    try:
        push_old_tags(reg, tmp_path / "layout", 3)
        s = Setup(reg, journal, tmp_path, listener)
        s.wait_for(lambda e: e["action"] == "push" and e["target"].get("tag") == "b2", "push")
        s.prune("--keep-last-n", "100")
        # As if the listener and the janitor had run for two days (see
        # test_pull_retention.start_record).
        doc = json.loads(reg.store.read(PULLS_FILE))
        assert doc["sources"], doc
        doc["covered_since"] = time.time() - 2 * DAY
        reg.store.write(PULLS_FILE, json.dumps(doc).encode())
        yield s
    finally:
        reg.stop()
        listener.stop()


def test_a_tag_pulled_per_the_notifications_survives_keep_last_n_1(setup: Setup) -> None:
    reg = setup.registry
    assert pull(reg, "app:b1", setup.work / "pulled").returncode == 0
    got = setup.wait_for(
        lambda e: e["action"] == "pull" and e["target"].get("tag") == "b1", "pull of b1"
    )
    assert got["request"]["method"] == "GET" and "/manifests/" in got["target"]["url"]
    assert got["source"]["instanceID"] and got["source"]["addr"]
    assert not reg.log.read_text().count("/manifests/b1")  # not from the log: it has none
    events = setup.prune_after_delivery()
    assert deleted(events) == {"b0"}, events
    assert not any(e["event"] == "pull_record_short" for e in events)
    assert reg.tags("app") == ["b1", "b2"]
    assert pull(reg, "app:b1", setup.work / "after").returncode == 0


def test_a_registry_restart_keeps_what_it_may_have_lost(setup: Setup) -> None:
    """The registry restarts (its queue, had it held anything, is gone); a HEAD of b2 is the
    new instance's first event. Nothing says b0 and b1 were not pulled before it: both stay,
    and the janitor says so."""
    reg = setup.registry
    [old] = {e["source"]["instanceID"] for e in setup.events()}
    reg.stop()
    reg.start()
    assert head_manifest(reg, "app", "b2") == 200
    new = setup.wait_for(lambda e: e["source"]["instanceID"] != old, "event of the new instance")
    assert new["action"] == "pull" and new["request"]["method"] == "HEAD"
    events = setup.prune()
    assert deleted(events) == set(), events
    [short] = [e for e in events if e["event"] == "pull_record_short"]
    assert short["tags"] == 2
    assert reg.tags("app") == ["b0", "b1", "b2"]


def test_a_pull_the_registry_still_holds_deletes_nothing_on_pull_grounds(setup: Setup) -> None:
    """The listener is down: the registry keeps b1's pull queued. Without the registry's
    count of undelivered notifications the journal would look complete and b1 would go;
    with it nothing is deleted on pull grounds until the pull arrives, and then b1 stays."""
    reg = setup.registry
    setup.listener.stop()
    assert pull(reg, "app:b1", setup.work / "pulled").returncode == 0
    held = setup.prune_after_delivery()
    assert deleted(held) == set(), held
    [short] = [e for e in held if e["event"] == "pull_record_short"]
    assert "not delivered yet" in short["message"], short
    assert reg.tags("app") == ["b0", "b1", "b2"]
    setup.listener.start()
    setup.wait_for(lambda e: e["target"].get("tag") == "b1", "the queued pull of b1")
    events = setup.prune_after_delivery()
    assert deleted(events) == {"b0"}, events
    assert reg.tags("app") == ["b1", "b2"]
