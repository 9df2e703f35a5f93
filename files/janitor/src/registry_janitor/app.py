"""Runs a command with a loaded configuration (placeholder until the pieces land)."""

from __future__ import annotations

import logging

from registry_janitor.config import Config

log = logging.getLogger("registry_janitor")


def run(command: str, cfg: Config, *, as_json: bool, verbose: bool) -> int:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    log.warning("%s: not implemented yet", command)
    return 0
