"""SIGKILL of `registry-janitor listen` while the registry posts: every envelope it answered 200
is in the journal after a restart, and the journal reads without an unreadable line."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from registry_janitor.journal import JournalReader

UNIT = str(Path(__file__).resolve().parent.parent / "unit")
if UNIT not in sys.path:
    sys.path.insert(0, UNIT)

from envelopes import HEADERS, envelope, event

TOKEN = "sigkill-trial-token-0123456789"
# Events per envelope: one poster sends about 14 MB each (the listener takes up to 16 MiB),
# so the write of one takes milliseconds and a kill can land inside it; two send 10 kB.
BIG, SMALL = 20000, 20
TRIALS = 12


def test_a_kill_loses_no_acknowledged_envelope_and_cuts_no_line(tmp_path: Path) -> None:
    journal = tmp_path / "notifications.jsonl"
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    port = _free_port()
    acked: set[str] = set()
    sent = cut = 0
    rng = random.Random(11)
    for trial in range(TRIALS):
        proc = _start(tmp_path, port, journal, token)
        stop = threading.Event()
        results: list[tuple[str, int]] = []
        posters = [
            threading.Thread(target=_post_until, args=(port, f"t{trial}-{n}", size, stop, results))
            # Where the kill waits for a write, the big envelopes alone.
            for n, size in enumerate((BIG, SMALL, SMALL) if trial % 4 == 3 else (BIG,))
        ]
        for p in posters:
            p.start()
        if trial % 4 == 3:
            time.sleep(rng.uniform(0.5, 2.0))
        else:  # the moment the journal ends inside a line: inside a write
            deadline = time.monotonic() + 20
            while not _inside_a_line(journal) and time.monotonic() < deadline:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        for p in posters:
            p.join()
        sent += len(results)
        cut += not journal.read_bytes().endswith(b"\n")
        acked |= {tag for tag, status in results if status == 200}
    # The last restart drops a cut line, as the next append would.
    _start(tmp_path, port, journal, token).terminate()

    lines = journal.read_text().splitlines()
    found = {e["target"]["tag"] for line in lines[1:] for e in json.loads(line)["events"]}
    assert acked <= found, f"acknowledged but lost: {sorted(acked - found)[:5]}"
    reader = JournalReader(journal, {})
    try:
        reader.read_since(None)  # False: no position to continue from
    finally:
        reader.close()
    assert reader.unreadable == 0
    assert cut > 0, "no kill landed inside a write"
    print(f"{len(acked)} of {sent} envelopes acknowledged, {cut} of {TRIALS} kills cut a line")


def _start(work: Path, port: int, journal: Path, token: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "JANITOR_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "JANITOR_LISTEN_TOKEN_FILE": str(token),
        "JANITOR_NOTIFICATIONS_JOURNAL": str(journal),
    }
    with (work / "listener.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry_janitor", "listen"], env=env, stderr=log
        )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            assert proc.poll() is None, (work / "listener.log").read_text()
            assert time.monotonic() < deadline, "the listener did not start"
            time.sleep(0.05)


def _post_until(port: int, prefix: str, events: int, stop: threading.Event, results: list) -> None:
    n = 0
    while not stop.is_set():
        tag = f"{prefix}-{n}"
        n += 1
        body = envelope(*(event(tag=tag, when=1_796_605_200.0 + i) for i in range(events)))
        headers = HEADERS | {"Authorization": f"Bearer {TOKEN}"}
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/events", body, headers)
            results.append((tag, conn.getresponse().status))
            conn.close()
        except OSError:
            results.append((tag, 0))
            return


def _inside_a_line(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        return end > 0 and os.pread(fd, 1, end - 1) != b"\n"
    finally:
        os.close(fd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
