"""The one line a run ends with: what it kept, removed and reclaimed."""

from __future__ import annotations

from registry_janitor.output import human_bytes, human_duration
from registry_janitor.records import SweepStats, VerifyStats


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"


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
                f" for {human_duration(revision_grace)} (a later sweep)"
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
                f"{_n(stats.blobs_spared, 'unreferenced blob')} younger than {human_duration(gc_grace)}"
                " spared"
            )
        if stats.blobs_restored:
            parts.append(f"{_n(stats.blobs_restored, 'held blob')} put back")
        if stats.blobs_touched:
            parts.append(f"{_n(stats.blobs_touched, 'candidate')} kept: a client asked for it")
        if stats.blobs_not_held:
            parts.append(f"{_n(stats.blobs_not_held, 'candidate')} could not be held (kept)")
        parts.append(f"gc {stats.gc_duration:.1f} s" + ("" if stats.gc_ok else " FAILED"))
    elif command == "prune" and stats.gc_engine == "registry":
        parts.append("garbage-collect next")
    elif command in ("sweep", "gc"):
        parts.append("no garbage collection")
    if stats.errors:
        parts.append(_n(stats.errors, "error"))
    return f"{prefix}: {', '.join(parts)}"


_LIMITS = {
    "bytes": "byte budget used up",
    "time": "time budget used up",
    "stop": "stopped",
}


def verify_summary(stats: VerifyStats) -> str:
    prefix = (
        "verify stopped early"
        if stats.stopped
        else (f"verify {'dry run ' if stats.dry_run else ''}done")
    )
    rate = stats.bytes_verified / stats.hash_seconds if stats.hash_seconds > 0 else 0.0
    where = " (left in place)" if stats.dry_run else " (quarantined)"
    parts = [
        (
            f"{_n(stats.blobs_verified, 'blob')} / {human_bytes(stats.bytes_verified)} verified"
            f" ({human_bytes(int(rate))}/s)"
        ),
        f"{len(stats.corrupt)} corrupt" + (where if stats.corrupt else ""),
    ]
    if stats.broken_tags:
        parts.append(f"{_n(len(stats.broken_tags), 'tag')} to push again")
    if stats.manifests_unreadable:
        parts.append(_n(len(stats.manifests_unreadable), "unreadable manifest"))
    if stats.unverified:
        parts.append(f"{_n(stats.unverified, 'blob')} never verified left")
    if stats.due:
        parts.append(f"{stats.due} due again left")
    if stats.limit:
        parts.append(_LIMITS.get(stats.limit, stats.limit))
    if stats.quarantined:
        parts.append(f"{stats.quarantined} in quarantine")
    if stats.errors:
        parts.append(_n(stats.errors, "error"))
    parts.append(f"{stats.duration:.1f} s")
    return f"{prefix}: {', '.join(parts)}"
