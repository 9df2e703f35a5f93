"""`registry-janitor listen`: what it answers, and that a 200 means the envelope is on disk."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envelopes import HEADERS, envelope, event
from registry_janitor import config, journal, listener
from registry_janitor.config import Listen

TOKEN = "s3cr3t-t0ken-for-tests"


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[listener.Listener]:
    server = listener.Listener(Listen("127.0.0.1", 0, TOKEN, tmp_path / "notifications.jsonl"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def post(
    server: listener.Listener,
    body: bytes,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    path: str = "/events",
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    sent = dict(HEADERS if headers is None else headers)
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    conn.request("POST", path, body, sent)
    resp = conn.getresponse()
    try:
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def journal_events(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [e for line in lines if "events" in line for e in line["events"]]


def test_an_envelope_with_the_token_is_journaled_and_acknowledged(
    serving: listener.Listener,
) -> None:
    pulled = event(tag="v1")
    assert post(serving, envelope(pulled, event("push", method="PUT"))) == (
        200,
        "accepted 2 event(s)\n",
    )
    assert journal_events(serving.settings.journal) == [pulled, event("push", method="PUT")]
    assert serving.settings.journal.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]])
def test_without_the_token_nothing_is_journaled(
    serving: listener.Listener, token: str | None
) -> None:
    status, _ = post(serving, envelope(event(tag="v1")), token=token)
    assert status == 401
    assert not serving.settings.journal.exists()


def test_the_token_must_be_a_bearer_token(serving: listener.Listener) -> None:
    headers = {**HEADERS, "Authorization": TOKEN}
    assert post(serving, envelope(event()), token=None, headers=headers)[0] == 401


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", '"events"'),
        (b'{"events": {}}', '"events"'),
        (b'{"events": [], "extra": 1}', '"events"'),
        (envelope(event("pull", method="POST")), 'request.method "POST"'),
        (envelope(event("tagged")), 'unknown action "tagged"'),
        (envelope({**event(), "source": {"addr": "r:5000"}}), "instanceID"),
        (envelope({**event(), "timestamp": "yesterday"}), "timestamp"),
        (envelope(event(digest="latest")), "not a digest"),
        (envelope(event(), {**event(), "target": {"repository": "a"}}), "events[1]"),
    ],
)
def test_a_bad_envelope_is_refused_whole_with_the_reason(
    serving: listener.Listener, body: bytes, why: str
) -> None:
    status, message = post(serving, body)
    assert status == 400 and why in message, message
    assert journal_events(serving.settings.journal) == []


def test_another_media_type_or_path_is_refused(serving: listener.Listener) -> None:
    body = envelope(event())
    assert post(serving, body, headers={"Content-Type": "application/json"})[0] == 415
    assert post(serving, body, path="/")[0] == 404
    assert journal_events(serving.settings.journal) == []


def test_a_journal_that_cannot_be_written_gets_no_200(tmp_path: Path) -> None:
    settings = Listen("127.0.0.1", 0, TOKEN, tmp_path / "gone" / "notifications.jsonl")
    server = listener.Listener(settings)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        assert post(server, envelope(event()))[0] == 503
    finally:
        server.shutdown()
        server.server_close()


def test_the_200_comes_only_after_the_envelope_is_fsynced(
    serving: listener.Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync is made slow: a listener that answered first would answer before it returns."""
    order: list[str] = []
    real_fsync = os.fsync
    path = serving.settings.journal

    def slow_fsync(fd: int) -> None:
        time.sleep(0.3)
        real_fsync(fd)
        if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
            order.append(f"fsync with {len(journal_events(path))} event(s) in the file")

    monkeypatch.setattr(journal.os, "fsync", slow_fsync)
    status, _ = post(serving, envelope(event(tag="v1")))
    order.append(f"{status} with {len(journal_events(path))} event(s) in the file")
    assert order[-2:] == ["fsync with 1 event(s) in the file", "200 with 1 event(s) in the file"]


def test_concurrent_envelopes_each_land_on_a_line_of_their_own(
    serving: listener.Listener,
) -> None:
    bodies = [envelope(event(tag=f"t{i}", when=1_796_605_200.0 + i)) for i in range(20)]
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda b=b: results.append(post(serving, b)[0])) for b in bodies
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 20
    tags = sorted(e["target"]["tag"] for e in journal_events(serving.settings.journal))
    assert tags == sorted(f"t{i}" for i in range(20))


def test_listen_needs_a_journal_and_a_token_of_some_length(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    flags = {
        "data_dir": str(data),
        "notifications_journal": str(tmp_path / "j.jsonl"),
        "listen_token_file": str(token),
    }
    cfg = config.load(flags, {}, command="listen")
    assert cfg.listen == Listen("127.0.0.1", 5080, TOKEN, tmp_path / "j.jsonl")
    assert TOKEN not in repr(cfg.listen)
    with pytest.raises(config.ConfigError, match="journal"):
        config.load({**flags, "notifications_journal": ""}, {}, command="listen")
    token.write_text("short")
    with pytest.raises(config.ConfigError, match="at least 16"):
        config.load(flags, {}, command="listen")
    token.write_text(TOKEN)
    with pytest.raises(config.ConfigError, match="host:port"):
        config.load({**flags, "listen_address": "127.0.0.1"}, {}, command="listen")


def test_a_connection_the_registry_resets_leaves_no_traceback(
    serving: listener.Listener, capfd: pytest.CaptureFixture[str]
) -> None:
    """The registry's HTTP client resets idle keep-alive connections: the listener notes it
    at debug level, and keeps answering."""
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", serving.server_address[1]))
        s.sendall(b"POST /events HTTP/1.1\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # with linger 0: a reset
    time.sleep(0.3)
    assert post(serving, envelope(event(tag="v1")))[0] == 200
    assert "Traceback" not in capfd.readouterr().err
