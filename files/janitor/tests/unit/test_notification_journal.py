"""The notification journal as a source of the pull record: pulls, registry restarts as gaps,
rotation that loses nothing, and a prune that keeps a tag pulled only per the journal."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from envelopes import event
from registry_janitor import config, journal, pulls
from registry_janitor.output import Output
from registry_janitor.registry_log import RegistryLog
from registry_janitor.sweep import Janitor
from synthetic import Store

T0 = 1_796_605_200.0  # 2026-12-07T01:00:00Z
A = "11111111-1111-1111-1111-111111111111"
B = "22222222-2222-2222-2222-222222222222"
SLACK = 1.0


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "notifications.jsonl"


def deliver(path: Path, *events: dict[str, Any]) -> None:
    """What the listener does with an envelope (received when its last event happened)."""
    journal.append(path, list(events), max(_when(e) for e in events))


def _when(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["timestamp"]).timestamp()


def read(s: Store, path: Path, now: float, *, save: bool = True) -> pulls.Feed:
    feed = pulls.read_feed(s.storage, None, now, path)
    if save and feed.current:
        pulls.save(s.storage, feed.record)
    return feed


def started(path: Path) -> float:
    return float(json.loads(path.read_text().splitlines()[0])["started"])


def test_manifest_pulls_by_tag_and_digest_feed_the_record(s: Store, path: Path) -> None:
    deliver(
        path,
        event("push", tag="v1", method="PUT", when=T0),
        event(tag="v1", when=T0 + 1),
        event(method="HEAD", when=T0 + 2),  # by digest
        event(blob=True, digest="sha256:" + "cd" * 32, when=T0 + 3),  # a layer: no pull
        event("mount", blob=True, method="POST", when=T0 + 4),
    )
    feed = read(s, path, T0 + 10)
    assert feed.current
    digest = event()["target"]["digest"]
    assert feed.record.pulls == {"ci/app": {"v1": (T0 + 1, 0.0), digest: (0.0, T0 + 2)}}
    assert pulls.counts_by_repository(feed.read) == {"ci/app": {"GET": 1, "HEAD": 1}}
    # The first read: complete from the later of the journal's start and the registry's first
    # event (nothing says what that registry sent before).
    assert feed.covered_since == min(T0 + 10, max(started(path), T0) + SLACK)
    assert "no pull record yet" in feed.gap
    assert feed.record.sources == {"registry-1:5000": (A, T0 + 4)}


def test_the_next_run_resumes_without_a_gap(s: Store, path: Path) -> None:
    deliver(path, event(tag="v1", when=T0))
    first = read(s, path, T0 + 10)
    deliver(path, event(tag="v2", when=T0 + 20))
    second = read(s, path, T0 + 30)
    assert second.current and second.gap == ""
    assert second.covered_since == first.covered_since
    assert [p.reference for p in second.read] == ["v2"]
    assert second.record.sources == {"registry-1:5000": (A, T0 + 20)}


def test_a_registry_restart_is_a_gap_from_its_first_event_on(s: Store, path: Path) -> None:
    """The old instance's queue died with it: pulls between its last event and the new
    instance's first may be lost, so the record is complete only from that first event."""
    deliver(path, event(tag="v1", when=T0))
    read(s, path, T0 + 10)
    doc = json.loads((s.root / pulls.PULLS_FILE).read_text())
    doc["covered_since"] = T0 - 5 * 86400  # as if the listener had run for days
    (s.root / pulls.PULLS_FILE).write_text(json.dumps(doc))
    deliver(path, event(tag="v2", when=T0 + 100))  # same instance: continuous
    assert read(s, path, T0 + 110).covered_since == T0 - 5 * 86400
    deliver(path, event(tag="v3", when=T0 + 500, instance=B))
    feed = read(s, path, T0 + 600)
    assert feed.current
    assert feed.covered_since == T0 + 500 + SLACK
    assert "registry at registry-1:5000 restarted" in feed.gap
    assert "2026-12-07T01:01:40Z and 2026-12-07T01:08:20Z" in feed.gap
    assert set(feed.record.pulls["ci/app"]) == {"v1", "v2", "v3"}  # real pulls stay
    assert feed.record.sources == {"registry-1:5000": (B, T0 + 500)}


def test_a_second_registry_host_is_a_gap_from_its_first_event(s: Store, path: Path) -> None:
    deliver(path, event(tag="v1", when=T0))
    read(s, path, T0 + 10)
    deliver(path, event(tag="v2", when=T0 + 100, addr="registry-2:5000", instance=B))
    feed = read(s, path, T0 + 200)
    assert feed.covered_since == T0 + 100 + SLACK
    assert "first notification from the registry at registry-2:5000" in feed.gap
    assert set(feed.record.sources) == {"registry-1:5000", "registry-2:5000"}


def test_rotation_waits_for_every_line_to_be_merged_and_loses_none(s: Store, path: Path) -> None:
    deliver(path, event(tag="v1", when=T0))
    feed = read(s, path, T0 + 10)
    deliver(path, event(tag="v2", when=T0 + 20))  # arrives after the read
    assert not journal.rotate(path, feed.record.journal, min_bytes=0)
    feed = read(s, path, T0 + 30)
    assert journal.rotate(path, feed.record.journal, min_bytes=0)
    assert journal.rotated(path).exists() and path.exists()
    deliver(path, event(tag="v3", when=T0 + 40))
    after = read(s, path, T0 + 50)
    assert after.current and after.gap == ""
    assert [p.reference for p in after.read] == ["v3"]
    assert set(after.record.pulls["ci/app"]) == {"v1", "v2", "v3"}


def test_rotation_needs_the_size_and_the_position(s: Store, path: Path) -> None:
    deliver(path, event(tag="v1", when=T0))
    feed = read(s, path, T0 + 10)
    assert not journal.rotate(path, feed.record.journal)  # small: stays
    assert not journal.rotate(path, None, min_bytes=0)  # nothing merged
    assert not journal.rotated(path).exists()


def test_a_journal_replaced_past_unread_lines_is_a_gap(s: Store, path: Path) -> None:
    deliver(path, event(tag="v1", when=T0))
    read(s, path, T0 + 10)
    deliver(path, event(tag="lost", when=T0 + 20))
    path.unlink()  # or truncated, or rotated twice: those lines are gone
    time.sleep(0.01)
    deliver(path, event(tag="v2", when=T0 + 30))
    feed = read(s, path, T0 + 1e9)
    assert feed.current and "rotated or replaced" in feed.gap
    assert feed.covered_since == started(path) + SLACK  # the new file's start


def test_a_missing_journal_leaves_the_run_without_coverage(s: Store, path: Path) -> None:
    feed = read(s, path, T0)
    assert not feed.current and feed.covered_since is None
    assert "cannot read the notification journal" in feed.gap


def test_an_unreadable_line_is_a_gap_until_the_next_one(s: Store, path: Path) -> None:
    deliver(path, event(tag="v1", when=T0))
    read(s, path, T0 + 10)
    with path.open("a") as f:
        f.write('{"received": 1, "events": [{"action": "pull"}]}\n')
    feed = read(s, path, T0 + 20, save=False)
    assert feed.covered_since == T0 + 20 and "unreadable" in feed.gap  # none after it yet
    deliver(path, event(tag="v2", when=T0 + 30))
    feed = read(s, path, T0 + 40)
    assert feed.covered_since == T0 + 30  # the next line's receipt


def test_a_line_cut_by_a_killed_listener_is_dropped_not_joined(s: Store, path: Path) -> None:
    """A listener killed inside a write leaves a line without its newline, never answered
    200: the next append drops it (the registry sends it again) instead of joining its own
    line to it, which would make one unreadable line of an acknowledged one."""
    deliver(path, event(tag="v1", when=T0))
    since = read(s, path, T0 + 10).covered_since
    whole = path.read_bytes()
    cut = json.dumps({"received": T0 + 15, "events": [event(tag="v2", when=T0 + 15)]})
    with path.open("a") as f:
        f.write(cut[: len(cut) // 2])
    deliver(path, event(tag="v2", when=T0 + 20))  # the registry's retry
    assert path.read_bytes().startswith(whole)
    assert all(json.loads(line) for line in path.read_text().splitlines())
    feed = read(s, path, T0 + 30)
    assert feed.gap == "" and feed.covered_since == since  # no gap
    assert feed.record.pulls["ci/app"]["v2"][0] == T0 + 20


def test_a_journal_cut_inside_its_header_starts_again(path: Path) -> None:
    path.write_bytes(b'{"journal": "registry-janitor notif')
    deliver(path, event(tag="v1", when=T0))
    header, line = (json.loads(x) for x in path.read_text().splitlines())
    assert header["journal"] == "registry-janitor notification journal"
    assert line["events"][0]["target"]["tag"] == "v1"


NOW = time.time()
DAY = 86400


def prune(s: Store, path: Path, **flags: object) -> set[str]:
    cfg = config.load(
        {
            "data_dir": str(s.root),
            "gc_settle": "0",
            "keep_last_n": "1",
            "keep_pulled_within": "1d",
            "notifications_journal": str(path),
            **flags,
        },
        env={},
    )
    with ThreadPoolExecutor(4) as pool, open(os.devnull, "w") as sink:
        Janitor(cfg, Output(as_json=True, stream=sink), pool, threading.Event()).sweep(
            run_prune=True, run_gc=False
        )
    tags = s.repositories / "ci/app" / "_manifests" / "tags"
    return {p.name for p in tags.iterdir()}


def backdate_record(s: Store) -> None:
    doc = json.loads((s.root / pulls.PULLS_FILE).read_text())
    doc["covered_since"] = NOW - 3 * DAY
    (s.root / pulls.PULLS_FILE).write_text(json.dumps(doc))


@pytest.mark.parametrize("restart", [False, True])
def test_prune_keeps_what_the_journal_says_was_pulled_and_nothing_less(
    s: Store, path: Path, restart: bool
) -> None:
    """b0, b1, b2 pushed days ago, keep_last_n=1: b1 was pulled today per the journal and
    stays; b0 goes. After a registry restart since the last run nobody knows that b0 was
    not pulled: it stays too."""
    for i in range(3):
        s.tag("ci/app", f"b{i}", s.image(f"b{i}"), NOW - 5 * DAY + i)
    deliver(path, event("push", tag="b2", method="PUT", when=NOW - 60))
    assert prune(s, path, keep_last_n="10") == {"b0", "b1", "b2"}  # starts the record
    backdate_record(s)
    deliver(path, event(tag="b1", when=NOW - 30, instance=B if restart else A))
    assert prune(s, path) == ({"b0", "b1", "b2"} if restart else {"b1", "b2"})


def test_a_journal_newly_configured_beside_the_log_starts_its_own_coverage(
    s: Store, path: Path, tmp_path: Path
) -> None:
    """Both sources: every gap of either counts (the later start wins)."""
    log = tmp_path / "registry.log"
    log.write_text(
        'time="2026-12-07T01:00:00Z" level=info msg="response completed"'
        ' http.request.method=GET http.request.uri="/v2/ci/app/manifests/v1"'
        " http.response.status=200\n"
    )
    reader = RegistryLog(log, pulls=True)
    try:
        pulls.save(s.storage, pulls.read_feed(s.storage, reader, T0 + 10).record)
    finally:
        reader.close()
    deliver(path, event(tag="v2", when=T0 + 100))
    reader = RegistryLog(log, pulls=True)
    try:
        feed = pulls.read_feed(s.storage, reader, T0 + 200, path)
    finally:
        reader.close()
    assert feed.current and "notification journal is read for the first time" in feed.gap
    assert feed.covered_since == T0 + 200  # clamped to now: the journal started later
    assert set(feed.record.pulls["ci/app"]) == {"v1", "v2"}
    assert pulls.counts_by_repository(feed.read) == {"ci/app": {"GET": 1}}  # one source


def test_a_listener_that_received_nothing_yet_is_a_journal_that_covers_its_time(
    s: Store, path: Path
) -> None:
    """listen starts the journal: no events since then is an answer (the janitor can keep its
    record going), where no journal at all is none."""
    journal.start(path)
    first = read(s, path, time.time() + 60)
    assert first.current and first.covered_since == started(path) + SLACK
    head = path.read_bytes()
    journal.start(path)  # a restarted listener keeps the file
    assert path.read_bytes() == head
    when = time.time()
    deliver(path, event(tag="v1", when=when))
    after = read(s, path, when + 120)  # the registry's first event: nothing before it known
    assert after.current and after.covered_since == pytest.approx(when + SLACK, abs=1e-3)


def debug_vars(pending: object, name: str = "registry-janitor") -> bytes:
    """The registry's /debug/vars (2.8): its notification endpoints with their metrics."""
    endpoint = {"name": name, "url": "http://janitor:5080/events", "Metrics": {"Pending": pending}}
    return json.dumps({"registry": {"notifications": {"endpoints": [endpoint]}}}).encode()


@pytest.mark.parametrize(
    ("page", "gap"),
    [
        (debug_vars(0), ""),
        (debug_vars(2), "has 2 notification(s) not delivered yet"),
        (debug_vars(0, name="other"), "cannot tell"),
        (debug_vars(None), "cannot tell"),
        (b"<html>", "cannot tell"),
        (None, "cannot tell"),  # nothing answers
    ],
)
def test_the_journal_counts_only_when_no_registry_holds_a_notification(
    s: Store, path: Path, page: bytes | None, gap: str
) -> None:
    deliver(path, event(tag="v1", when=T0))
    read(s, path, T0 + 10)

    class Vars(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Vars)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]
    if page is None:
        server.shutdown()
        server.server_close()
    try:
        url = f"http://127.0.0.1:{port}/debug/vars"
        feed = pulls.read_feed(s.storage, None, T0 + 20, path, [url])
    finally:
        if page is not None:
            server.shutdown()
            server.server_close()
    assert feed.current == (gap == "")
    assert gap in feed.gap
    if gap:
        assert feed.covered_since is None  # this run keeps what a pull might keep
    # What the metric registry_janitor_notifications_undelivered shows (-1: unknown).
    assert feed.undelivered == (None if "cannot tell" in gap else 2 if gap else 0)
