"""SIGKILL while the pull record is being saved: the record on the share stays readable."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from registry_janitor import pulls
from registry_janitor.storage import FilesystemStorage

WRITER = """
import sys
from pathlib import Path
from registry_janitor import pulls
from registry_janitor.storage import FilesystemStorage

storage = FilesystemStorage(Path(sys.argv[1]))
refs = {f"tag-{i:06}": (float(i), 0.0) for i in range(100_000)}
n = 0
print("ready", flush=True)
while True:
    n += 1
    pulls.save(storage, pulls.Record({"big/repo": refs, "gen": {"n": (float(n), 0.0)}}, 1.0))
"""


def test_a_kill_during_a_save_leaves_a_readable_record(tmp_path: Path) -> None:
    """SIGKILL the moment a save starts writing (a temporary file appears, or the record
    itself changes size: a save in place would cut it), the record being several MB so the
    kill lands inside the write; and at random moments. The record read afterwards is always
    a whole one, never a cut or a mixture."""
    storage = FilesystemStorage(tmp_path)
    record_file = tmp_path / pulls.PULLS_FILE
    refs = {f"tag-{i:06}": (float(i), 0.0) for i in range(100_000)}
    pulls.save(storage, pulls.Record({"big/repo": refs, "gen": {"n": (0.0, 0.0)}}, 1.0))
    whole = record_file.stat().st_size  # the same for generations 0-9
    rng = random.Random(7)
    generations = set()
    inside = 0  # kills that landed inside a write
    for trial in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        if trial % 2:
            time.sleep(rng.uniform(0.2, 1.5))
        else:
            deadline = time.monotonic() + 10
            while not _writing(tmp_path, whole) and time.monotonic() < deadline:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        inside += _writing(tmp_path, whole)
        for t in _temporary(tmp_path):
            t.unlink()
        record, problem = pulls.load(storage)
        assert problem == "", f"trial {trial}: {problem}"
        assert len(record.pulls["big/repo"]) == 100_000
        generations.add(record.pulls["gen"]["n"][0])
    assert inside > 0, "no kill landed inside a write"
    print(f"{inside} of 8 kills inside a write; records read: generations {sorted(generations)}")


def _temporary(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(f".{pulls.PULLS_FILE}.")]


def _writing(root: Path, whole: int) -> bool:
    try:
        size = (root / pulls.PULLS_FILE).stat().st_size
    except FileNotFoundError:
        return True
    return bool(_temporary(root)) or size != whole
