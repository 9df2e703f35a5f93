"""Plain records the other modules pass around: what the store holds, what a sweep did.

No I/O here, so pure code (retention, planning, output) imports only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from registry_janitor.storage import REPOSITORIES


@dataclass(frozen=True)
class Tag:
    repository: str
    name: str
    digest: str | None  # from current/link; None: the link is missing or not a digest
    mtime: float  # current/link mtime = last push; the tag directory's mtime without a link


@dataclass(frozen=True)
class Repository:
    name: str
    tags: tuple[Tag, ...] = ()
    revisions: frozenset[str] = frozenset()  # "sha256:<hex>" of _manifests/revisions
    uploads: int = 0  # entries in _uploads (uploads in progress)
    has_manifests: bool = True  # False: only `_layers` (a first push refused or aborted)
    # Something could not be read (other than "gone"): never delete anything here.
    errors: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """Where it lives in the storage."""
        return f"{REPOSITORIES}/{self.name}"

    @property
    def complete(self) -> bool:
        return not self.errors


# What the last garbage collection came to (the `reason` label of registry_janitor_gc_ok),
# a fixed set so an alert can route on it: "collected" (ran; deleted what was garbage, maybe
# nothing), "not_run", and the ways it fails closed, deleting nothing: "store_unreadable" (the
# mark could not read the whole store), "recheck_unreadable" (the re-check of held blobs
# could not), "garbage_collect_failed" (the registry's garbage-collect exited non-zero or
# could not start), "error" (an unexpected exception during GC).
GC_REASONS = (
    "collected",
    "not_run",
    "store_unreadable",
    "recheck_unreadable",
    "garbage_collect_failed",
    "error",
)


@dataclass
class SweepStats:
    """What one run did; filled as it goes, so a run that fails still reports its part."""

    command: str = "sweep"
    dry_run: bool = False
    repositories: int = 0
    tags_seen: int = 0
    tags_kept: int = 0
    tags_deleted: int = 0
    manifests_unlinked: int = 0
    manifests_spared: int = 0  # unreachable, but not unreachable for long enough yet
    leftovers_removed: int = 0
    repositories_removed: int = 0
    errors: int = 0
    gc_ran: bool = False
    gc_engine: str = "janitor"
    gc_ok: bool = True
    gc_message: str = ""
    gc_reason: str = "not_run"  # one of GC_REASONS
    gc_duration: float = 0.0
    blobs_marked: int = 0
    blobs_deleted: int = 0
    blobs_spared: int = 0  # unreferenced, but younger than the grace period
    blobs_restored: int = 0  # held, then put back: a manifest pushed meanwhile names them
    blobs_not_held: int = 0  # candidates that could not be held (an error): not deleted
    blobs_touched: int = 0  # candidates the registry's log showed a client asking for: kept
    bytes_reclaimed: int = 0
    blobs_unknown_size: int = 0
    # Manifest pulls read from the registry's log in this run: repository -> method -> count
    pulls_read: dict[str, dict[str, int]] = field(default_factory=dict)
    pulls_covered_since: float | None = None  # the pull record holds every pull since
    # notifications the registries held for the listener (-1: one did not answer; None: the
    # janitor does not read notifications)
    notifications_undelivered: int | None = None
    duration: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    stopped: bool = False

    @property
    def removed_anything(self) -> bool:
        return (
            self.tags_deleted
            + self.manifests_unlinked
            + self.leftovers_removed
            + self.repositories_removed
            > 0
        )

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.gc_ok


@dataclass
class VerifyStats:
    """What one `verify` run did; filled as it goes, like SweepStats."""

    dry_run: bool = False
    blobs: int = 0  # blobs in the store (with data)
    blobs_verified: int = 0  # hashed and found intact in this run
    bytes_verified: int = 0
    corrupt: list[str] = field(default_factory=list)  # digests found corrupt in this run
    quarantined: int = 0  # entries in the quarantine after the run
    broken_tags: list[str] = field(default_factory=list)  # "repo:tag" that cannot be pulled
    manifests_unreadable: list[str] = field(default_factory=list)  # intact but unparseable
    unverified: int = 0  # blobs whose current content was never verified, after the run
    oldest_unverified: float | None = None  # data mtime of the oldest of them
    due: int = 0  # verified blobs due again and not reached, after the run
    limit: str = ""  # what ended the hashing: "bytes", "time", "stop" or "" (all done)
    errors: int = 0
    duration: float = 0.0
    hash_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """False when the store serves broken content or the run could not do its work."""
        return not (self.corrupt or self.broken_tags or self.manifests_unreadable or self.errors)
