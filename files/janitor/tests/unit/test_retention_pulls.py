"""Pull rules on generated cases: they keep more, never less, and a record that does not
cover the window never lets them delete what a pull outside it might have kept."""

from __future__ import annotations

import random
import re

from registry_janitor import retention
from registry_janitor.policy import Rule
from registry_janitor.retention import Pulls
from registry_janitor.store import Tag

NOW = 1_800_000_000.0
DAY = 86400.0
CASES = 3000


def _digest(i: int) -> str:
    return f"sha256:{i:064x}"


def generate(rng: random.Random) -> tuple[list[Tag], Rule, dict[str, float]]:
    n_tags = rng.randint(0, 20)
    names = rng.sample([f"{p}{i}" for p in ("v", "build-", "pr-") for i in range(30)], n_tags)
    ages = [0, 600, 3600, DAY / 2, DAY, 2 * DAY, 5 * DAY, 20 * DAY]
    tags = [Tag("repo", n, _digest(rng.randint(0, 5)), NOW - rng.choice(ages)) for n in names]
    # Pulls after the push (a pull before it is no use of this tag's content anyway).
    last = {
        t.name: rng.uniform(t.mtime, NOW) if rng.random() < 0.7 else t.mtime - 1
        for t in tags
        if rng.random() < 0.6
    }
    rule = Rule(
        keep_last_n=rng.randint(0, 5),
        keep_min_age=rng.choice([0, 0, 3600]),
        max_age=rng.choice([None, None, 10 * DAY]),
        protect_tags=rng.choice([None, re.compile(r"v\d+")]),
        keep_pulled_within=rng.choice([None, 3600, DAY, 3 * DAY]),
        keep_last_pulled=rng.choice([0, 0, 1, 3]),
    )
    return tags, rule, last


ALL = [(seed, *generate(random.Random(seed))) for seed in range(CASES)]
COVERAGES = [None, NOW, NOW - DAY / 3, NOW - 2 * DAY, NOW - 30 * DAY]


def kept(decisions: list[retention.TagDecision]) -> set[str]:
    return {d.tag.name for d in decisions if d.keep}


def test_pull_rules_never_keep_less_than_the_rule_without_them() -> None:
    for seed, tags, rule, last in ALL:
        plain = Rule(rule.keep_last_n, rule.keep_min_age, rule.max_age, rule.protect_tags)
        without = kept(retention.decide(tags, plain, NOW))
        for since in COVERAGES:
            assert without <= kept(retention.decide(tags, rule, NOW, pulls=Pulls(last, since)))


def test_a_shorter_record_never_deletes_more() -> None:
    """Coverage only ever shrinks what is known: every tag kept with a longer record is kept
    with a shorter one (and with none)."""
    for seed, tags, rule, last in ALL:
        previous: set[str] = set()
        for since in sorted(c for c in COVERAGES if c is not None) + [None]:  # longest first
            now_kept = kept(retention.decide(tags, rule, NOW, pulls=Pulls(last, since)))
            assert previous <= now_kept, (seed, since)
            previous = now_kept


def test_with_a_full_record_the_rules_keep_exactly_what_they_say() -> None:
    for seed, tags, rule, last in ALL:
        pulls = Pulls(last, NOW - 365 * DAY)
        decisions = retention.decide(tags, rule, NOW, pulls=pulls)
        plain = Rule(rule.keep_last_n, rule.keep_min_age, rule.max_age, rule.protect_tags)
        base = kept(retention.decide(tags, plain, NOW))
        eligible = [
            d.tag
            for d in decisions
            if not rule.is_protected(d.tag.name)
            and not (rule.max_age is not None and NOW - d.tag.mtime > rule.max_age)
            or NOW - d.tag.mtime < rule.keep_min_age
        ]
        eligible = [t for t in eligible if not rule.is_protected(t.name)]
        within = (
            {t.name for t in eligible if NOW - pulls.used(t) < rule.keep_pulled_within}
            if rule.keep_pulled_within is not None
            else set()
        )
        by_use = sorted(eligible, key=lambda t: (pulls.used(t), t.name), reverse=True)
        last_pulled = {t.name for t in by_use[: rule.keep_last_pulled]}
        assert kept(decisions) == base | within | last_pulled, seed
        assert not any(d.reason == retention.KEEP_PULL_UNKNOWN for d in decisions), seed


def test_without_a_record_every_tag_a_pull_might_keep_stays() -> None:
    for seed, tags, rule, last in ALL:
        if not rule.uses_pulls:
            continue
        decisions = retention.decide(tags, rule, NOW, pulls=Pulls(last, None))
        for d in decisions:
            if not d.keep:
                assert d.reason == retention.DELETE_MAX_AGE, seed


def test_only_what_the_uncovered_time_could_change_is_kept_unknown() -> None:
    """A tag kept as unknown could have been pulled, after its push and within the window,
    before the record starts."""
    for seed, tags, rule, last in ALL:
        if rule.keep_pulled_within is None or rule.keep_last_pulled:
            continue
        for since in COVERAGES[1:]:
            assert since is not None
            for d in retention.decide(tags, rule, NOW, pulls=Pulls(last, since)):
                if d.reason == retention.KEEP_PULL_UNKNOWN:
                    start = NOW - rule.keep_pulled_within
                    assert max(start, d.tag.mtime) < since, seed


def test_a_tag_pulled_an_hour_ago_survives_keep_last_n_1() -> None:
    old = [Tag("r", f"b{i}", _digest(i), NOW - (10 - i) * DAY) for i in range(3)]
    rule = Rule(keep_last_n=1, keep_pulled_within=int(DAY))
    pulls = Pulls({"b0": NOW - 3600}, covered_since=NOW - 2 * DAY)
    reasons = {d.tag.name: d.reason for d in retention.decide(old, rule, NOW, pulls=pulls)}
    assert reasons == {
        "b2": retention.KEEP_NEWEST,
        "b1": retention.DELETE_BEYOND_N,
        "b0": retention.KEEP_PULLED,
    }
    # The same record one day shorter: b1 (pushed before it) might have been pulled.
    short = Pulls({"b0": NOW - 3600}, covered_since=NOW - DAY / 2)
    reasons = {d.tag.name: d.reason for d in retention.decide(old, rule, NOW, pulls=short)}
    assert reasons["b1"] == retention.KEEP_PULL_UNKNOWN


def test_keep_last_pulled_ranks_by_the_later_of_push_and_pull() -> None:
    tags = [Tag("r", f"b{i}", _digest(i), NOW - (10 - i) * DAY) for i in range(4)]
    rule = Rule(keep_last_n=0, keep_last_pulled=2)
    pulls = Pulls({"b0": NOW - 60, "b1": NOW - 7 * DAY}, covered_since=NOW - 30 * DAY)
    assert kept(retention.decide(tags, rule, NOW, pulls=pulls)) == {"b0", "b3"}
