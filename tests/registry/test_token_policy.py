"""The access policy: pattern matching as a table, who a rule names, and the files that
must not load (``testfiles/tokens/policy-negative``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.server.access import Access, ScopeError, parse_scope, parse_scopes
from registry.server.policy import PolicyError, WatchedFile, compile_pattern, parse_policy

TESTFILES = Path(__file__).parent / "testfiles" / "tokens"

PATTERNS = [
    # pattern, name, matches
    ("team/app", "team/app", True),
    ("team/app", "team/app2", False),
    ("team/*", "team/app", True),
    ("team/*", "team/app/sub", False),
    ("team/*", "team", False),
    ("team/**", "team", True),
    ("team/**", "team/a/b/c", True),
    ("team/**", "teamx/a", False),
    ("*/public/**", "lib/public", True),
    ("*/public/**", "lib/public/base", True),
    ("*/public/**", "a/b/public/base", False),
    ("**", "anything/at/all", True),
    ("a.b/*", "a.b/c", True),
    ("a.b/*", "axb/c", False),
    ("app-*", "app-1", True),
]


@pytest.mark.parametrize(("pattern", "name", "matches"), PATTERNS)
def test_repository_patterns(pattern: str, name: str, matches: bool) -> None:
    assert bool(compile_pattern(pattern).match(name)) is matches


def test_rules_name_users_groups_everyone_and_anonymous() -> None:
    policy = parse_policy((TESTFILES / "access.yaml").read_text(), "access.yaml")
    assert policy.actions("alice", "team/app") == {"pull", "push"}
    assert policy.actions("bob", "team/app") == {"pull"}
    assert policy.actions("bob", "team/lib") == set()
    assert policy.actions(None, "lib/public/base") == {"pull"}
    assert policy.actions("bob", "lib/public/base") == {"pull"}
    assert policy.actions(None, "team/app") == set()
    assert policy.actions("admin", "secret/x") == {"pull", "push", "delete"}
    everyone = parse_policy('rules: [{repositories: ["x"], users: ["*"], actions: [pull]}]', "p")
    assert everyone.actions("anyone", "x") == {"pull"} and everyone.actions(None, "x") == set()


@pytest.mark.parametrize("case", sorted(p.name for p in (TESTFILES / "policy-negative").iterdir()))
def test_policies_that_must_not_load(case: str) -> None:
    path = TESTFILES / "policy-negative" / case
    with pytest.raises(PolicyError, match=case):
        parse_policy(path.read_text(), case)


def _look_again(watched: WatchedFile) -> None:
    watched._next_check = 0.0  # the next current() looks at the file now, not in a second


def test_a_policy_caught_empty_or_gone_keeps_the_rules_before(tmp_path: Path) -> None:
    """An editor truncates before it writes, a deploy renames the old file away before the
    new one: in between, the file is empty or missing. That is no policy to switch to
    (it would refuse everyone); the rules loaded before stay until a usable file is back."""
    path = tmp_path / "access.yaml"
    path.write_text((TESTFILES / "access.yaml").read_text())
    watched = WatchedFile(path, parse_policy, "access policy")
    assert watched.current().actions("alice", "team/app") == {"pull", "push"}
    path.write_text("")
    _look_again(watched)
    assert watched.current().actions("alice", "team/app") == {"pull", "push"}
    path.unlink()
    _look_again(watched)
    assert watched.current().actions("alice", "team/app") == {"pull", "push"}
    path.write_text('rules: [{repositories: ["team/app"], users: [alice], actions: [pull]}]\n')
    _look_again(watched)
    assert watched.current().actions("alice", "team/app") == {"pull"}
    path.write_text("rules: []\n")  # refusing everyone is said so
    _look_again(watched)
    assert watched.current().actions("alice", "team/app") == set()


def test_a_policy_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "access.yaml"
    path.write_bytes(b'rules: [{repositories: ["caf\xe9"], users: [a], actions: [pull]}]\n')  # Latin-1
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text .*: save it as UTF-8"):
        WatchedFile(path, parse_policy, "access policy")


def test_scopes() -> None:
    assert parse_scope("repository:team/app:pull,push") == [
        Access("repository", "team/app", "pull"), Access("repository", "team/app", "push")]
    assert parse_scope("repository(plugin):a:pull") == [Access("repository", "a", "pull")]
    assert parse_scope("repository:localhost:5000/a:pull") == [Access("repository", "localhost:5000/a", "pull")]
    assert len(parse_scopes(["repository:a:pull repository:b:push"])) == 2
    for bad in ("", "repository", "repository:a", "repository::pull", ":a:pull", "repository:a:,"):
        with pytest.raises(ScopeError):
            parse_scope(bad)
    with pytest.raises(ScopeError, match="is 611 characters long, over the limit of 512"):
        parse_scope("repository:" + "a" * 595 + ":pull")
    with pytest.raises(ScopeError, match="too many"):
        parse_scopes([f"repository:r{i}:pull" for i in range(100)])
