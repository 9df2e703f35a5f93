"""Policy file parsing and glob matching."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from registry_janitor import cli, config
from registry_janitor.policy import PolicyError, Rule, glob_to_regex, load_policy

DEFAULT = Rule(keep_last_n=10)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("glob", "name", "matches"),
    [
        ("mina/*", "mina/app", True),
        ("mina/*", "mina/app/sub", False),
        ("mina/*", "mina", False),
        ("scratch/**", "scratch/a/b/c", True),
        ("scratch/**", "scratch/a", True),
        ("**", "anything/at/all", True),
        ("*", "top", True),
        ("*", "a/b", False),
        ("team/**/cache", "team/cache", True),
        ("team/**/cache", "team/x/y/cache", True),
        ("app?", "app1", True),
        ("app?", "app/", False),
        ("a.b", "axb", False),
    ],
)
def test_glob(glob: str, name: str, matches: bool) -> None:
    assert (glob_to_regex(glob).fullmatch(name) is not None) is matches


def test_first_match_wins_and_defaults_fill_in(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[rules]]
match = "mina/*"
keep_last_n = 50

[[rules]]
match = ["scratch/**", "tmp/**"]
keep_last_n = 3
max_age = "2d"
protect_tags = "keep-.*"

[[rules]]
match = "mina/**"
keep_last_n = 1
""",
    )
    policy = load_policy(path, Rule(keep_last_n=10, keep_min_age=60))
    assert policy.rule_for("mina/app").keep_last_n == 50
    assert policy.rule_for("mina/app").keep_min_age == 60
    assert policy.rule_for("mina/app/deep").keep_last_n == 1
    scratch = policy.rule_for("tmp/x/y")
    assert (scratch.keep_last_n, scratch.max_age) == (3, 172800)
    assert scratch.is_protected("keep-me") and not scratch.is_protected("me")
    assert policy.rule_for("other") == policy.default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rules]\nmatch = 'x'", "not valid TOML"),
        ("[[rules]]\nkeep_last_n = 3", "rules[0].match: must be a glob"),
        ("[[rules]]\nmatch = 'x'\nkeep_last_n = -3", "rules[0].keep_last_n: must be a whole"),
        ("[[rules]]\nmatch = 'x'\nkeep_last = 3", "unknown key(s) keep_last"),
        ("[[rules]]\nmatch = 'x'\nmax_age = '2 days'", "rules[0].max_age: must be a duration"),
        ("[[rules]]\nmatch = 'x'\nprotect_tags = '('", "not a valid regular expression"),
        ("[[rules]]\nmatch = 'x'\nkeep_min_age = '2d'\nmax_age = '1d'", "max_age is shorter"),
        ("rules = 3", "must be an array of tables"),
        ("[defaults]\nkeep_last_n = 3", "unknown top-level key(s) defaults"),
    ],
)
def test_malformed_policy(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(write(tmp_path, text), DEFAULT)


def test_malformed_policy_through_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for s in config.SETTINGS.values():
        monkeypatch.delenv(s.env, raising=False)
    path = write(tmp_path, "[[rules]\nmatch = 'x'")
    code = cli.main(["prune", "--data-dir", str(tmp_path), "--policy-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"registry-janitor: JANITOR_POLICY_FILE {path}: not valid TOML")
