"""What a prune will do, decided from the scan: reads (manifests, a few stats), never writes.

The dry run prints this plan; the real run applies it (sweep.py), so there is one code path.

Signature tags (`sha256-<hex>.sig|.att|.sbom`, `sha256-<hex>`) follow their image
(retention.py): which manifests the kept ordinary tags reach is read here, then
`retention.decide_attached` decides them. An untagged OCI referrer (a manifest with a
`subject`) stays linked while its subject is kept.

Unreachable revisions (manifests no remaining tag reaches) are unlinked only once they have
been unreachable for a while (REVISION_GRACE, or KEEP_MIN_AGE if longer):
- a revision whose last tag this very prune deletes (and, for an index, its children): dated
  by its own push (its link's mtime), since the policy already decided its tag goes;
- any other (a `latest` overwritten by a newer push, a platform manifest uploaded before its
  index, a push by digest): dated from when a prune first saw it unreachable, kept in a small
  state file, so someone pulling the previous `latest` by digest keeps it for that long after
  the overwrite, whenever it was pushed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from registry_janitor import manifests, pulls, retention, store
from registry_janitor.policy import Policy, Rule
from registry_janitor.records import Repository, Tag
from registry_janitor.storage import Storage

log = logging.getLogger(__name__)

# Seconds a repository's `_layers` must have been quiet before an empty repository is removed:
# a push links its layers before it uploads the manifest.
EMPTY_REPOSITORY_AGE = retention.LEFTOVER_TAG_AGE

# Default REVISION_GRACE: a multi-arch push uploads its platform manifests before the index
# that reaches them.
REVISION_GRACE = 3600

# In the data directory: when each unreachable revision was first seen unreachable.
UNREACHABLE_FILE = ".registry-janitor.unreachable"


@dataclass
class RepoPlan:
    repository: Repository
    rule: Rule
    decisions: list[retention.TagDecision] = field(default_factory=list)
    leftovers: list[Tag] = field(default_factory=list)
    attached: list[Tag] = field(default_factory=list)  # signature tags, decided after reach
    unlink: list[str] = field(default_factory=list)
    unlink_mtimes: dict[str, float] = field(default_factory=dict)  # revision link mtime seen
    spared: int = 0  # unreachable revisions not unreachable for long enough yet
    # Unreachable because this prune deletes their last tag: recorded before the tags go, so
    # a run killed in between still dates them by their push next time.
    condemned: set[str] = field(default_factory=set)
    remove_repository: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def deleted(self) -> list[retention.TagDecision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[retention.TagDecision]:
        return [d for d in self.decisions if d.keep]


FirstSeen = dict[str, dict[str, float]]  # repository -> digest -> first seen unreachable
# In the state instead of a time: a prune deleted (or was deleting) the revision's last tag.
CONDEMNED = 0.0


def load_first_seen(storage: Storage) -> FirstSeen:
    try:
        raw, _ = storage.read(UNREACHABLE_FILE, 64 << 20)
        data = json.loads(raw or b"{}")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Only delays unlinking (everything counts as first seen now): never deletes more.
        log.warning("cannot read %s (%s); starting it again", UNREACHABLE_FILE, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        repo: {d: float(t) for d, t in seen.items() if isinstance(t, (int, float))}
        for repo, seen in data.items()
        if isinstance(repo, str) and isinstance(seen, dict)
    }


def save_first_seen(storage: Storage, seen: FirstSeen) -> None:
    storage.write(UNREACHABLE_FILE, json.dumps(seen, separators=(",", ":")).encode())


def with_condemned(seen: FirstSeen, plans: Sequence[RepoPlan]) -> FirstSeen:
    """The state plus every revision the plan makes unreachable, marked CONDEMNED."""
    out = {repo: dict(digests) for repo, digests in seen.items()}
    for p in plans:
        for d in p.condemned:
            out.setdefault(p.repository.name, {})[d] = CONDEMNED
    return out


def _decide(
    repo: Repository,
    rule: Rule,
    now: float,
    feed: pulls.Feed | None,
    reader: manifests.ManifestReader,
) -> RepoPlan:
    plan = RepoPlan(repo, rule)
    if not repo.complete:
        plan.decisions = [
            retention.TagDecision(t, True, "repository not fully readable") for t in repo.tags
        ]
        return plan
    pulled = None
    if rule.uses_pulls:
        pulled, unreadable = pulls.for_plan(feed, repo, rule.count_head_as_pull, reader)
        if unreadable:
            plan.errors.append(
                f"cannot read manifest(s) {', '.join(unreadable)}; their tags count as pulled"
            )
    plan.decisions = retention.decide(repo.tags, rule, now, repo.revisions, pulled)
    plan.attached = [t for t in repo.tags if retention.attached_to(t, repo.revisions)]
    plan.leftovers = [t for t in repo.tags if retention.is_leftover(t, now)]
    return plan


def _mtime(storage: Storage, path: str) -> float | str | None:
    """mtime; None when gone; the error text for any other failure (keeps the item)."""
    try:
        return storage.stat(path).mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror or exc}"


def plan_all(
    repos: Sequence[Repository],
    policy: Policy,
    now: float,
    reader: manifests.ManifestReader,
    storage: Storage,
    *,
    unlink_untagged: bool,
    revision_grace: int = REVISION_GRACE,
    first_seen: FirstSeen | None = None,
    pool: Executor | None = None,
    feed: pulls.Feed | None = None,
) -> list[RepoPlan]:
    """Decide everything for every repository. `first_seen` is updated in place (the
    caller saves it when it applies the plan). `feed`: the pull record, for pull rules (None:
    none, and they keep every tag they might keep).

    The I/O is batched across repositories (one manifest walk, one batch of stats), so on a
    slow filesystem the number of sequential round-trip waves does not grow with the number
    of repositories.
    """
    seen = first_seen if first_seen is not None else {}
    plans = [_decide(r, policy.rule_for(r.name), now, feed, reader) for r in repos]
    active = [p for p in plans if p.repository.complete]
    _decide_attached([p for p in active if p.attached], now, reader)
    if unlink_untagged:
        _plan_unlinks(active, now, reader, storage, revision_grace, seen, pool)
    empty = []
    for p in active:
        going = {d.tag for d in p.deleted} | set(p.leftovers)
        left_tags = [t for t in p.repository.tags if t not in going]
        left_revisions = p.repository.revisions - set(p.unlink)
        if not left_tags and not left_revisions and p.repository.uploads == 0:
            empty.append(p)

    def quiet_since(p: RepoPlan) -> float | str | None:
        # A push links its layers before it uploads the manifest: wait for a quiet `_layers`.
        # None: no `_layers/sha256` at all (nothing links a layer there; an upload in progress
        # would show in `_uploads`).
        return _mtime(storage, f"{p.repository.path}/_layers/sha256")

    for p, quiet in zip(empty, store.pmap_batched(pool, quiet_since, empty), strict=True):
        if isinstance(quiet, str):
            p.errors.append(quiet)
        else:
            p.remove_repository = quiet is None or now - quiet >= EMPTY_REPOSITORY_AGE
    return plans


def _reaches(
    plans: Sequence[RepoPlan],
    roots: Sequence[frozenset[str]],
    reader: manifests.ManifestReader,
    consequence: str,
) -> list[manifests.Reachability]:
    """What each plan's roots reach; a warning names what could not be read, and what
    follows from it. One manifest walk for all the repositories, then each from the cache."""
    manifests.closure(frozenset().union(*roots), reader)
    out = []
    for p, repo_roots in zip(plans, roots, strict=True):
        reach = manifests.closure(repo_roots, reader)
        if not reach.complete:
            # An error of the repository, not a warning: the sweep reports it (exit 1), so a
            # fault that changed what the prune does is never silent.
            p.errors.append(
                f"cannot read manifest(s) {', '.join(sorted(reach.unreadable))}; {consequence}"
            )
        out.append(reach)
    return out


def _decide_attached(plans: list[RepoPlan], now: float, reader: manifests.ManifestReader) -> None:
    """Signature tags: kept while the kept ordinary tags reach their manifest."""
    roots = [retention.remaining_roots(p.decisions) for p in plans]
    for p, reach in zip(
        plans, _reaches(plans, roots, reader, "keeping every signature tag here"), strict=True
    ):
        p.decisions += retention.decide_attached(
            p.attached,
            p.rule,
            now,
            p.repository.revisions,
            reach.reachable if reach.complete else None,
        )


def _with_referrers(
    active: list[RepoPlan], roots: list[frozenset[str]], reader: manifests.ManifestReader
) -> list[frozenset[str]]:
    """The roots plus every untagged OCI referrer whose subject they reach (and, in turn,
    referrers of those). Reads the unreachable revisions, all repositories at once."""
    found: dict[str, str] = {}  # referrer -> subject
    checked: frozenset[str] = frozenset()
    while True:
        reaches = [manifests.closure(r, reader) for r in roots]  # served from the cache
        unreached = [
            p.repository.revisions - reach.reachable if reach.complete else frozenset()
            for p, reach in zip(active, reaches, strict=True)
        ]
        subjects = reader.subjects(frozenset().union(*unreached) - checked)
        checked |= frozenset().union(*unreached)
        found.update(subjects)
        grown = False
        for i, reach in enumerate(reaches):
            more = {d for d in unreached[i] if found.get(d) in reach.reachable}
            if more:
                roots[i] = roots[i] | more
                grown = True
        if not grown:
            return roots


def _plan_unlinks(
    active: list[RepoPlan],
    now: float,
    reader: manifests.ManifestReader,
    storage: Storage,
    revision_grace: int,
    seen: FirstSeen,
    pool: Executor | None,
) -> None:
    roots = [retention.remaining_roots(p.decisions) for p in active]
    roots = _with_referrers(active, roots, reader)
    candidates: dict[int, list[str]] = {}
    for p, reach in zip(
        active, _reaches(active, roots, reader, "not unlinking any revision here"), strict=True
    ):
        if reach.complete:
            candidates[id(p)] = sorted(p.repository.revisions - reach.reachable)
    jobs = [(p, d) for p in active for d in candidates.get(id(p), [])]
    stats = store.pmap_batched(
        pool,
        lambda job: _mtime(
            storage,
            f"{job[0].repository.path}/_manifests/revisions/sha256/"
            f"{job[1].removeprefix('sha256:')}/link",
        ),
        jobs,
    )
    # What this prune's own tag deletions make unreachable: the deleted tags' manifests and,
    # for an index, its children (read once; the cache serves every repository).
    targets = {id(p): {x.tag.digest for x in p.deleted if x.tag.digest} for p in active}
    manifests.closure(frozenset().union(*targets.values()), reader)
    deleted_targets = {}
    for p in active:
        reach = manifests.closure(targets[id(p)], reader)
        deleted_targets[id(p)] = reach.reachable
        if not reach.complete:
            # Safe (their children wait REVISION_GRACE instead of going with their tag), but
            # a fault that changed the outcome: reported.
            p.errors.append(
                f"cannot read manifest(s) {', '.join(sorted(reach.unreadable))} of deleted"
                " tags; what they reach waits for REVISION_GRACE"
            )
    still: FirstSeen = {}
    for (p, d), written in zip(jobs, stats, strict=True):
        if isinstance(written, str):
            p.errors.append(written)
            continue
        if written is None:
            continue  # unlinked meanwhile
        name = p.repository.name
        threshold = max(p.rule.keep_min_age, revision_grace)
        first = seen.get(name, {}).get(d, now)
        if d in deleted_targets[id(p)] or first == CONDEMNED:
            p.condemned.add(d)
            first, since = CONDEMNED, written
        else:
            since = max(first, written)
        if now - since >= threshold:
            p.unlink.append(d)
            p.unlink_mtimes[d] = written
        else:
            p.spared += 1
            still.setdefault(name, {})[d] = first
    # Only what is unreachable now stays in the state: a revision tagged again starts over.
    seen.clear()
    seen.update(still)
