"""Retention rules: the environment's default rule plus optional per-repository rules.

The policy file is TOML::

    [[rules]]
    match = "mina/*"          # glob (or list of globs) on the repository name
    keep_last_n = 50

    [[rules]]
    match = "scratch/**"
    keep_last_n = 3
    max_age = "2d"

    [[rules]]
    match = "deploy/**"
    keep_last_n = 2
    keep_pulled_within = "7d"  # and every tag pushed or pulled in the last 7 days
    keep_last_pulled = 5       # and the 5 tags pushed or pulled most recently
    count_head_as_pull = true  # a manifest HEAD counts as a pull (the default)

`*` matches within one path component, `**` across components. The first rule whose
glob matches wins; a repository no rule matches gets the default rule (the environment).
Keys a rule leaves out are taken from the default rule.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PolicyError(ValueError):
    """A setting or policy value is invalid; `setting` names where it came from."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


def parse_duration(setting: str, text: str) -> int:
    """`0`, `90s`, `30m`, `6h`, `2d`, `1w` -> seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise PolicyError(
            setting, f'must be a duration like 0, 90s, 30m, 6h, 2d or 1w, got "{text}"'
        )
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse_tag_pattern(setting: str, text: str) -> re.Pattern[str] | None:
    """Empty means none; otherwise a regex that must match the WHOLE tag (re.fullmatch)."""
    if text == "":
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise PolicyError(setting, f'not a valid regular expression ({exc}), got "{text}"') from exc


@dataclass(frozen=True)
class Rule:
    """How many tags of a repository to keep, and which ones are untouchable."""

    keep_last_n: int
    keep_min_age: int = 0  # seconds; younger tags are never deleted
    max_age: int | None = None  # seconds; older unprotected tags are deleted even within N
    protect_tags: re.Pattern[str] | None = None
    # Pull rules (retention.py): tags pushed or pulled within this many seconds are kept,
    # and the `keep_last_pulled` tags pushed or pulled most recently; None / 0: off.
    keep_pulled_within: int | None = None
    keep_last_pulled: int = 0
    count_head_as_pull: bool = True  # CI checks whether an image exists with a HEAD
    source: str = "default"  # for log lines: which rule decided

    @property
    def uses_pulls(self) -> bool:
        return self.keep_pulled_within is not None or self.keep_last_pulled > 0

    def is_protected(self, tag: str) -> bool:
        return self.protect_tags is not None and self.protect_tags.fullmatch(tag) is not None


@lru_cache(maxsize=256)
def glob_to_regex(glob: str) -> re.Pattern[str]:
    """`*` and `?` stay inside one name component, `**` crosses `/`."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")  # `a/**/b` also matches `a/b`
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class Policy:
    default: Rule
    rules: tuple[tuple[tuple[str, ...], Rule], ...] = ()

    def rule_for(self, repository: str) -> Rule:
        for globs, rule in self.rules:
            if any(glob_to_regex(g).fullmatch(repository) for g in globs):
                return rule
        return self.default


_RULE_KEYS = {
    "match",
    "keep_last_n",
    "keep_min_age",
    "max_age",
    "protect_tags",
    "keep_pulled_within",
    "keep_last_pulled",
    "count_head_as_pull",
}


def _rule_from_table(where: str, table: object, default: Rule) -> tuple[tuple[str, ...], Rule]:
    if not isinstance(table, dict):
        raise PolicyError(where, "must be a table")
    unknown = set(table) - _RULE_KEYS
    if unknown:
        raise PolicyError(
            where, f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {sorted(_RULE_KEYS)}"
        )
    match = table.get("match")
    globs: tuple[str, ...]
    if isinstance(match, str):
        globs = (match,)
    elif isinstance(match, list) and match and all(isinstance(g, str) for g in match):
        globs = tuple(match)
    else:
        raise PolicyError(f"{where}.match", "must be a glob or a non-empty list of globs")
    rule = replace(default, source=f"{where} ({', '.join(globs)})")
    for key in ("keep_last_n", "keep_last_pulled"):
        if key in table:
            n = table[key]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise PolicyError(f"{where}.{key}", f"must be a whole number >= 0, got {n!r}")
            rule = (
                replace(rule, keep_last_n=n)
                if key == "keep_last_n"
                else replace(rule, keep_last_pulled=n)
            )
    for key in ("keep_min_age", "max_age", "keep_pulled_within"):
        if key in table:
            value = table[key]
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                seconds = value
            elif isinstance(value, str):
                seconds = parse_duration(f"{where}.{key}", value)
            else:
                raise PolicyError(f"{where}.{key}", f"must be a duration string, got {value!r}")
            if key == "keep_min_age":
                rule = replace(rule, keep_min_age=seconds)
            elif key == "max_age":
                rule = replace(rule, max_age=seconds)
            else:  # 0: off, as for the default
                rule = replace(rule, keep_pulled_within=seconds or None)
    if "count_head_as_pull" in table:
        head = table["count_head_as_pull"]
        if not isinstance(head, bool):
            raise PolicyError(f"{where}.count_head_as_pull", f"must be true or false, got {head!r}")
        rule = replace(rule, count_head_as_pull=head)
    if "protect_tags" in table:
        pattern = table["protect_tags"]
        if not isinstance(pattern, str):
            raise PolicyError(f"{where}.protect_tags", "must be a string (regular expression)")
        rule = replace(rule, protect_tags=parse_tag_pattern(f"{where}.protect_tags", pattern))
    check_rule(f"{where}", rule)
    return globs, rule


def check_rule(where: str, rule: Rule) -> None:
    if rule.max_age is not None and rule.max_age < rule.keep_min_age:
        raise PolicyError(where, "max_age is shorter than keep_min_age")


def load_policy(path: Path, default: Rule) -> Policy:
    """Parse a policy file; every problem raises PolicyError naming the file and key."""
    setting = f"JANITOR_POLICY_FILE {path}"
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(setting, f"cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(setting, f"not valid TOML ({exc})") from exc
    unknown = set(data) - {"rules"}
    if unknown:
        raise PolicyError(setting, f"unknown top-level key(s) {', '.join(sorted(unknown))}")
    tables = data.get("rules", [])
    if not isinstance(tables, list):
        raise PolicyError(setting, "`rules` must be an array of tables ([[rules]])")
    rules = tuple(
        _rule_from_table(f"{setting}: rules[{i}]", t, default) for i, t in enumerate(tables)
    )
    return Policy(default=default, rules=rules)
