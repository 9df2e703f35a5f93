"""Puts molecule/shared on sys.path: Molecule runs pytest on this folder's files alone, so
the helpers the scenarios share (registry_cache_testing) are not importable otherwise."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
