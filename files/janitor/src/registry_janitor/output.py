"""Where events go: readable log lines on stderr, or one JSON object per line on stdout."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import TextIO

log = logging.getLogger("registry_janitor")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": "log",
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "message": record.getMessage(),
            }
        )


class _HumanFormatter(logging.Formatter):
    # Plain lines for the normal case (the Ansible playbook prints them); a level prefix
    # only where it carries news. journald adds the timestamps.
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname}: {text}"


def setup_logging(*, as_json: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stdout if as_json else sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else _HumanFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class Output:
    """Named events with fields; in JSON mode the fields are the record."""

    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, text: str, *, level: int = logging.INFO, **fields: object) -> None:
        self.record(event, text, fields, level)

    def record(
        self, event: str, text: str, fields: Mapping[str, object], level: int = logging.INFO
    ) -> None:
        if not self.as_json:
            log.log(level, "%s", text)
            return
        record = {
            "event": event,
            "time": round(time.time(), 3),
            "level": logging.getLevelName(level).lower(),
            "message": text,
            **fields,
        }
        line = json.dumps(record, default=str)
        with self._lock:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: int) -> str:
    """The largest unit that divides it: `2 h`, `30 d`, `90 s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
