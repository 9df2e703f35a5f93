"""The one line a run ends with: what it kept, removed and reclaimed."""

from __future__ import annotations

from registry_janitor.output import human_bytes
from registry_janitor.records import SweepStats


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def summary(
    stats: SweepStats, command: str, *, revision_grace: int = 3600, gc_grace: int = 7200
) -> str:
    dry = stats.dry_run
    prefix = f"{command} {'dry run ' if dry else ''}done"
    if stats.stopped:
        prefix = f"{command} stopped early"
    parts = []
    if command in ("sweep", "prune"):
        parts += [
            _n(stats.repositories, "repository", "repositories"),
            f"{stats.tags_kept} tags kept",
            f"{stats.tags_deleted} {'to delete' if dry else 'deleted'}",
            f"{_n(stats.manifests_unlinked, 'manifest')} {'to unlink' if dry else 'unlinked'}",
        ]
        if stats.manifests_spared:
            parts.append(
                f"{_n(stats.manifests_spared, 'unreachable manifest')} spared until unreachable"
                f" for {_age(revision_grace)} (a later sweep)"
            )
    if stats.leftovers_removed:
        parts.append(_n(stats.leftovers_removed, "leftover tag dir"))
    if stats.repositories_removed:
        parts.append(_n(stats.repositories_removed, "empty repository", "empty repositories"))
    if stats.gc_ran:
        unknown = (
            f" (+{stats.blobs_unknown_size} of unknown size)" if stats.blobs_unknown_size else ""
        )
        verb = "to delete" if dry else "reclaimed"
        parts.append(
            f"{_n(stats.blobs_deleted, 'blob')} / {human_bytes(stats.bytes_reclaimed)} {verb}"
            f"{unknown}"
        )
        if stats.blobs_spared:
            parts.append(
                f"{_n(stats.blobs_spared, 'unreferenced blob')} younger than {_age(gc_grace)}"
                " spared"
            )
        if stats.blobs_restored:
            parts.append(f"{_n(stats.blobs_restored, 'held blob')} put back")
        parts.append(f"gc {stats.gc_duration:.1f} s" + ("" if stats.gc_ok else " FAILED"))
    elif command == "prune" and stats.gc_engine == "registry":
        parts.append("garbage-collect next")
    elif command in ("sweep", "gc"):
        parts.append("no garbage collection")
    if stats.errors:
        parts.append(_n(stats.errors, "error"))
    return f"{prefix}: {', '.join(parts)}"
