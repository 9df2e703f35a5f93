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
from collections.abc import Iterable
from dataclasses import dataclass

from registry_janitor.policy import Rule
from registry_janitor.records import Tag

LEFTOVER_TAG_AGE = 3600  # seconds before a tag directory without current/link is removed

KEEP_PROTECTED = "protected"
KEEP_YOUNG = "younger than min age"
KEEP_NEWEST = "within newest N"
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
    tags: Iterable[Tag], rule: Rule, now: float, revisions: frozenset[str] = frozenset()
) -> list[TagDecision]:
    """Keep/delete for each servable ordinary tag (one with a digest) of one repository;
    `revisions` (the repository's) tells attached tags, which are left out (decide_attached).

    Returned newest first. Tags without a digest are not ranked: see `is_leftover`.
    """
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
    return decisions


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
