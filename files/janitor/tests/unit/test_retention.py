"""Retention decisions on generated cases: properties that must hold for every input."""

from __future__ import annotations

import random
import re

import pytest
from registry_janitor import retention
from registry_janitor.policy import Rule
from registry_janitor.store import Tag

NOW = 1_800_000_000.0
CASES = 3000


def _digest(i: int) -> str:
    return f"sha256:{i:064x}"


def generate(rng: random.Random) -> tuple[list[Tag], Rule]:
    n_tags = rng.randint(0, 25)
    digests = [_digest(i) for i in range(rng.randint(1, 8))]
    # Few distinct times so ties are common.
    times = [
        NOW - rng.choice([0, 30, 600, 3600, 7200, 86400 * 3]) - rng.randint(0, 2)
        for _ in range(n_tags)
    ]
    names = rng.sample(
        [f"{p}{i}" for p in ("v", "build-", "latest", "pr-") for i in range(40)], n_tags
    )
    tags = [
        Tag("repo", name, None if rng.random() < 0.1 else rng.choice(digests), t)
        for name, t in zip(names, times, strict=True)
    ]
    rule = Rule(
        keep_last_n=rng.randint(0, 12),
        keep_min_age=rng.choice([0, 0, 60, 3600]),
        max_age=rng.choice([None, None, 86400, 86400 * 2]),
        protect_tags=rng.choice([None, re.compile(r"v\d+"), re.compile(r"latest.*")]),
    )
    return tags, rule


def cases() -> list[tuple[int, list[Tag], Rule]]:
    out = []
    for seed in range(CASES):
        tags, rule = generate(random.Random(seed))
        out.append((seed, tags, rule))
    return out


ALL = cases()


def test_every_servable_tag_gets_exactly_one_decision() -> None:
    for seed, tags, rule in ALL:
        decisions = retention.decide(tags, rule, NOW)
        got = sorted(d.tag.name for d in decisions)
        assert got == sorted(t.name for t in tags if t.digest is not None), seed


def test_never_deletes_a_protected_tag() -> None:
    for seed, tags, rule in ALL:
        for d in retention.decide(tags, rule, NOW):
            if rule.is_protected(d.tag.name):
                assert d.keep, seed


def test_never_deletes_a_tag_younger_than_min_age() -> None:
    for seed, tags, rule in ALL:
        for d in retention.decide(tags, rule, NOW):
            if NOW - d.tag.mtime < rule.keep_min_age:
                assert d.keep, seed


def test_keeps_exactly_the_n_newest_eligible_tags() -> None:
    for seed, tags, rule in ALL:
        decisions = retention.decide(tags, rule, NOW)
        eligible = [
            d.tag
            for d in decisions
            if not rule.is_protected(d.tag.name)
            and (
                rule.max_age is None
                or NOW - d.tag.mtime <= rule.max_age
                or NOW - d.tag.mtime < rule.keep_min_age
            )
        ]
        young = [t for t in eligible if NOW - t.mtime < rule.keep_min_age]
        kept = [d.tag for d in decisions if d.keep and not rule.is_protected(d.tag.name)]
        assert len(kept) == max(min(rule.keep_last_n, len(eligible)), len(young)), seed
        # ... and they are the newest ones (mtime, then name descending).
        ranked = sorted(eligible, key=retention.rank_key, reverse=True)
        assert set(kept) == set(ranked[: len(kept)]), seed


def test_a_digest_of_a_kept_tag_stays_a_root() -> None:
    for seed, tags, rule in ALL:
        decisions = retention.decide(tags, rule, NOW)
        roots = retention.remaining_roots(decisions)
        for d in decisions:
            if d.keep:
                assert d.tag.digest in roots, seed
        # A deleted tag sharing a kept tag's digest does not take the digest with it.
        kept_digests = {d.tag.digest for d in decisions if d.keep}
        assert kept_digests == set(roots), seed


def test_only_old_tags_are_deleted_beyond_max_age() -> None:
    for seed, tags, rule in ALL:
        for d in retention.decide(tags, rule, NOW):
            if d.reason == retention.DELETE_MAX_AGE:
                assert rule.max_age is not None and NOW - d.tag.mtime > rule.max_age, seed


def test_equal_mtimes_rank_by_tag_name_descending() -> None:
    tags = [Tag("r", n, _digest(1), NOW - 100) for n in ("a", "c", "b")]
    decisions = retention.decide(tags, Rule(keep_last_n=1), NOW)
    assert [(d.tag.name, d.keep) for d in decisions] == [("c", True), ("b", False), ("a", False)]


def test_protected_tags_do_not_count_toward_n() -> None:
    tags = [Tag("r", f"v{i}", _digest(i), NOW - 1000 + i) for i in range(3)] + [
        Tag("r", f"ci-{i}", _digest(10 + i), NOW - 2000 + i) for i in range(3)
    ]
    rule = Rule(keep_last_n=2, protect_tags=re.compile(r"v\d+"))
    kept = {d.tag.name for d in retention.decide(tags, rule, NOW) if d.keep}
    assert kept == {"v0", "v1", "v2", "ci-2", "ci-1"}


def test_protect_tags_must_match_the_whole_name() -> None:
    rule = Rule(keep_last_n=0, protect_tags=re.compile(r"v\d+"))
    assert rule.is_protected("v12")
    assert not rule.is_protected("dev12")
    assert not rule.is_protected("v12-rc")


@pytest.mark.parametrize(("age", "leftover"), [(10, False), (3599, False), (3601, True)])
def test_tag_without_link_is_a_leftover_after_an_hour(age: int, leftover: bool) -> None:
    assert retention.is_leftover(Tag("r", "t", None, NOW - age), NOW) is leftover
    assert not retention.is_leftover(Tag("r", "t", _digest(1), NOW - age), NOW)
