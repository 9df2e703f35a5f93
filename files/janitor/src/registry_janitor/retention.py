"""Which tags to keep: a pure function of tag records, a rule and the current time.

No I/O here, so the rules can be tested on thousands of generated cases.

Semantics (also in the README):
- Tags are ranked newest first by the mtime of `current/link` (last push). Equal mtimes are
  ordered by tag name, descending (so `build-9` ranks before `build-10` pushed in the same
  second; the order is arbitrary but stable).
- Protected tags (PROTECT_TAGS, matched against the whole tag name) are always kept and do
  NOT count toward N: N is the number of unprotected tags kept, so release tags never crowd
  out the CI tags.
- Tags younger than KEEP_MIN_AGE are always kept. They are the newest, so they fill N first;
  when more than N are young, all of them stay and every older unprotected tag goes.
- A rule's max_age (policy file only) deletes unprotected tags older than it even within N.
- Pull rules keep more, never less. A tag's last use is the later of its push and its last
  pull (`Pulls.last`: by its name, or by the digest of any manifest it reaches). Beyond N,
  a tag used within `keep_pulled_within` stays, and so do the `keep_last_pulled` tags used
  most recently (ranked like push times; protected tags and those past max_age left out).
  The pull record is complete only from `Pulls.covered_since` on: a tag that a pull before
  then (and within the window, and after its push) could have kept stays too, as
  KEEP_PULL_UNKNOWN. With no record at all, that is every tag either rule might keep.
- Tags are names: deleting a tag that shares its digest with a kept tag removes only the
  name; the manifest stays because reachability is computed from the remaining tags.
- Signature tags follow their image. A tag named `sha256-<hex>.sig`, `.att` or `.sbom`
  (cosign's tag scheme) or `sha256-<hex>` (the OCI 1.1 referrers fallback tag) whose manifest
  `sha256:<hex>` is a revision of the same repository is attached to that manifest: it is not
  ranked and never counts toward N (`decide` leaves it out); `decide_attached` keeps it
  while that manifest is kept (reachable from the kept ordinary tags) and deletes it in the
  same prune as the last tag that kept the manifest. Protected and young attached tags stay,
  as any tag does. When `sha256:<hex>` is not a revision of the repository (cosign's
  COSIGN_REPOSITORY puts signatures in another one) the tag is an ordinary tag.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from registry_janitor.policy import Rule
from registry_janitor.records import Tag

LEFTOVER_TAG_AGE = 3600  # seconds before a tag directory without current/link is removed

KEEP_PROTECTED = "protected"
KEEP_YOUNG = "younger than min age"
KEEP_NEWEST = "within newest N"
KEEP_PULLED = "pushed or pulled within keep_pulled_within"
KEEP_LAST_PULLED = "among the keep_last_pulled most recently used"
KEEP_PULL_UNKNOWN = "the pull record does not cover the time a pull would keep it"
DELETE_BEYOND_N = "beyond newest N"
DELETE_MAX_AGE = "older than max age"
KEEP_ATTACHED = "its manifest is kept"
DELETE_ATTACHED = "its manifest is not kept any more"
KEEP_UNKNOWN = "cannot tell whether its manifest is kept"

# cosign pkg/oci/remote/remote.go suffixTag; distribution-spec spec.md Referrers Tag Schema
ATTACHED_TAG = re.compile(r"sha256-([0-9a-f]{64})(?:\.(?:sig|att|sbom))?")


@dataclass(frozen=True)
class TagDecision:
    tag: Tag
    keep: bool
    reason: str


@dataclass(frozen=True)
class Pulls:
    """What the pull record tells about one repository's tags."""

    last: Mapping[str, float] = field(default_factory=dict)  # tag name -> last pull
    # Every pull from then on is in the record; None: no record (nothing is known).
    covered_since: float | None = None

    def used(self, tag: Tag) -> float:
        """Last push or recorded pull, whichever is later."""
        return max(tag.mtime, self.last.get(tag.name, 0.0))

    def exact(self, tag: Tag) -> bool:
        """No pull outside the record can make the tag's last use later than `used`."""
        start = self.covered_since
        return start is not None and max(self.used(tag), tag.mtime) >= start


def _pulled_within(tag: Tag, rule: Rule, now: float, pulls: Pulls) -> str | None:
    """The reason `keep_pulled_within` keeps the tag; None when it does not."""
    if rule.keep_pulled_within is None:
        return None
    window_start = now - rule.keep_pulled_within
    if pulls.used(tag) > window_start:
        return KEEP_PULLED
    # A pull the record does not hold: between the push and the record's start, within the
    # window.
    start = pulls.covered_since
    if start is None or max(window_start, tag.mtime) < start:
        return KEEP_PULL_UNKNOWN
    return None


_NEVER = (float("inf"), 1, "")


def _last_pulled(tags: list[Tag], rule: Rule, pulls: Pulls) -> dict[str, str]:
    """tag name -> why `keep_last_pulled` keeps it. A tag whose last use the record does not
    know exactly is ranked as high as it could be (just before the record's start), and
    kept unless `keep_last_pulled` tags were surely used later."""
    if rule.keep_last_pulled <= 0:
        return {}

    def low(t: Tag) -> tuple[float, int, str]:
        return (pulls.used(t), 0, t.name)

    def high(t: Tag) -> tuple[float, int, str]:
        if pulls.exact(t):
            return low(t)
        start = pulls.covered_since
        return _NEVER if start is None else (start, 1, "")

    lows = sorted(low(t) for t in tags)
    highs = sorted(high(t) for t in tags)
    out = {}
    for t in tags:
        surely_later = len(lows) - bisect_right(lows, high(t))
        if surely_later >= rule.keep_last_pulled:
            continue
        maybe_later = len(highs) - bisect_right(highs, low(t))
        if pulls.exact(t) and maybe_later < rule.keep_last_pulled:
            out[t.name] = KEEP_LAST_PULLED
        else:
            out[t.name] = KEEP_PULL_UNKNOWN
    return out


def rank_key(tag: Tag) -> tuple[float, str]:
    """Sort key, newest first when used with reverse=True."""
    return (tag.mtime, tag.name)


def attached_to(tag: Tag, revisions: frozenset[str]) -> str | None:
    """The manifest a signature tag is attached to; None for an ordinary tag."""
    m = ATTACHED_TAG.fullmatch(tag.name)
    if m is None or tag.digest is None:
        return None
    subject = f"sha256:{m[1]}"
    return subject if subject in revisions else None


def decide(
    tags: Iterable[Tag],
    rule: Rule,
    now: float,
    revisions: frozenset[str] = frozenset(),
    pulls: Pulls | None = None,
) -> list[TagDecision]:
    """Keep/delete for each servable ordinary tag (one with a digest) of one repository;
    `revisions` (the repository's) tells attached tags, which are left out (decide_attached).
    `pulls`: the pull record's view of them (None: no record; matters only to pull rules).

    Returned newest first. Tags without a digest are not ranked: see `is_leftover`.
    """
    pulls = pulls if pulls is not None else Pulls()
    ranked = sorted(
        (t for t in tags if t.digest is not None and attached_to(t, revisions) is None),
        key=rank_key,
        reverse=True,
    )
    decisions: list[TagDecision] = []
    kept_unprotected = 0
    for tag in ranked:
        age = now - tag.mtime
        if rule.is_protected(tag.name):
            decisions.append(TagDecision(tag, True, KEEP_PROTECTED))
        elif age < rule.keep_min_age:
            kept_unprotected += 1
            decisions.append(TagDecision(tag, True, KEEP_YOUNG))
        elif rule.max_age is not None and age > rule.max_age:
            decisions.append(TagDecision(tag, False, DELETE_MAX_AGE))
        elif kept_unprotected < rule.keep_last_n:
            kept_unprotected += 1
            decisions.append(TagDecision(tag, True, KEEP_NEWEST))
        else:
            decisions.append(TagDecision(tag, False, DELETE_BEYOND_N))
    if not rule.uses_pulls:
        return decisions
    candidates = [d.tag for d in decisions if not (d.reason in (KEEP_PROTECTED, DELETE_MAX_AGE))]
    last_pulled = _last_pulled(candidates, rule, pulls)
    out = []
    for d in decisions:
        if d.reason == DELETE_BEYOND_N:
            why = _pulled_within(d.tag, rule, now, pulls) or last_pulled.get(d.tag.name)
            if why == KEEP_PULL_UNKNOWN and last_pulled.get(d.tag.name) == KEEP_LAST_PULLED:
                why = KEEP_LAST_PULLED  # a certain reason before an uncertain one
            if why is not None:
                d = TagDecision(d.tag, True, why)
        out.append(d)
    return out


def decide_attached(
    tags: Iterable[Tag],
    rule: Rule,
    now: float,
    revisions: frozenset[str],
    kept: frozenset[str] | None,
) -> list[TagDecision]:
    """Keep/delete for each attached tag of one repository (`attached_to`), newest first.

    `kept`: the manifests the kept ordinary tags reach (with their index children); None
    when that is unknown (a manifest could not be read): then every attached tag stays.
    """
    decisions = []
    for tag in sorted(tags, key=rank_key, reverse=True):
        subject = attached_to(tag, revisions)
        if subject is None:
            continue
        if rule.is_protected(tag.name):
            decisions.append(TagDecision(tag, True, KEEP_PROTECTED))
        elif now - tag.mtime < rule.keep_min_age:
            decisions.append(TagDecision(tag, True, KEEP_YOUNG))
        elif kept is None:
            decisions.append(TagDecision(tag, True, KEEP_UNKNOWN))
        elif subject in kept:
            decisions.append(TagDecision(tag, True, KEEP_ATTACHED))
        else:
            decisions.append(TagDecision(tag, False, DELETE_ATTACHED))
    return decisions


def is_leftover(tag: Tag, now: float) -> bool:
    """A tag directory without a usable current/link, untouched for an hour: a crashed push
    or an interrupted deletion. Younger ones may be a push in progress."""
    return tag.digest is None and now - tag.mtime > LEFTOVER_TAG_AGE


def remaining_roots(decisions: Iterable[TagDecision]) -> frozenset[str]:
    """Digests still tagged after the decisions are applied: the roots of reachability."""
    return frozenset(d.tag.digest for d in decisions if d.keep and d.tag.digest is not None)
