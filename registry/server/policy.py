"""The built-in token server's access policy: who may do what to which repositories.

A YAML file (``auth.token.issue.policy``)::

    groups:
      devs: [alice, bob]
    rules:
      - repositories: ["team/*"]        # patterns, see below
        groups: [devs]
        actions: [pull, push]
      - repositories: ["*/public/**", "library/base"]
        anonymous: true                 # everyone, logged in or not
        actions: [pull]
      - repositories: ["**"]
        users: [admin]                  # "*": any authenticated user
        actions: ["*"]                  # pull, push, delete

A caller's actions on a repository are the union of the rules that name the caller (as a
user, through a group, ``*`` or ``anonymous``) and match the repository. Patterns: ``*``
matches within one path component, ``**`` across components (``team/**`` also matches
``team``); anything else matches itself. Robot accounts (:mod:`.robots`) are not
governed by the policy: their own scopes say what they may do.

Without a policy file every authenticated user may do everything and anonymous callers
nothing (basic auth's model). The file is re-read when it changes (mtime, size, inode,
looked at once a second at most); a file that no longer loads is logged and the rules
loaded before stay. A file that is empty (caught between an editor's truncate and write)
or gone (between two renames) does not load: an empty policy would refuse everyone, and
a policy that names nothing is written ``rules: []``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from .access import ACTIONS

__all__ = ["Policy", "PolicyError", "Rule", "WatchedFile", "compile_pattern", "parse_policy"]

log = logging.getLogger("pybuild.registry")

RELOAD_INTERVAL = 1.0
T = TypeVar("T")
Signature = tuple[int, int, int]


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the entry."""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A repository pattern as a regular expression (see the module docstring)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True, slots=True)
class Rule:
    patterns: tuple[re.Pattern[str], ...]
    users: frozenset[str]
    groups: frozenset[str]
    anonymous: bool
    actions: frozenset[str]


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: expected a list of names")
    return list(value)


class Policy:
    """Parsed rules; :meth:`actions` answers what a caller may do to a repository."""

    def __init__(self, rules: list[Rule], groups: dict[str, frozenset[str]]) -> None:
        self.rules = rules
        self.groups = groups

    def actions(self, user: str | None, repo: str) -> set[str]:
        """The actions ``user`` (None: anonymous) may take on ``repo``; ``*`` is expanded."""
        mine = {g for g, members in self.groups.items() if user is not None and user in members}
        out: set[str] = set()
        for rule in self.rules:
            named = rule.anonymous or (
                user is not None
                and ("*" in rule.users or user in rule.users or bool(mine & rule.groups))
            )
            if named and any(p.match(repo) for p in rule.patterns):
                out |= rule.actions
        if "*" in out:
            out = {"pull", "push", "delete"}
        return out


def parse_policy(text: str, origin: str) -> Policy:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{origin}: not valid YAML: {exc}") from None
    if doc is None:
        raise PolicyError(f"{origin}: the file is empty; write the rules (or 'rules: []' to refuse everyone)")
    if not isinstance(doc, dict):
        raise PolicyError(f"{origin}: expected a mapping with 'rules' (and 'groups')")
    unknown = set(doc) - {"rules", "groups"}
    if unknown:
        raise PolicyError(f"{origin}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    groups_doc = doc.get("groups") or {}
    if not isinstance(groups_doc, dict):
        raise PolicyError(f"{origin}: groups must map a group name to its members")
    groups = {
        str(g): frozenset(_strings(m, f"{origin}: group {g}")) for g, m in groups_doc.items()
    }
    rules_doc = doc.get("rules") or []
    if not isinstance(rules_doc, list):
        raise PolicyError(f"{origin}: rules must be a list")
    rules = []
    for n, item in enumerate(rules_doc, 1):
        where = f"{origin}: rule {n}"
        if not isinstance(item, dict):
            raise PolicyError(f"{where}: expected a mapping")
        unknown = set(item) - {"repositories", "users", "groups", "anonymous", "actions"}
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        patterns = _strings(item.get("repositories"), f"{where}: repositories")
        if not patterns:
            raise PolicyError(f"{where}: names no repositories")
        actions = _strings(item.get("actions"), f"{where}: actions")
        bad = [a for a in actions if a not in ACTIONS]
        if bad or not actions:
            raise PolicyError(f"{where}: actions must be some of {', '.join(ACTIONS)}")
        rule_groups = _strings(item.get("groups"), f"{where}: groups")
        missing = [g for g in rule_groups if g not in groups]
        if missing:
            raise PolicyError(f"{where}: unknown group(s) {', '.join(missing)}")
        anonymous = item.get("anonymous", False)
        if not isinstance(anonymous, bool):
            raise PolicyError(f"{where}: anonymous must be true or false")
        rules.append(
            Rule(
                tuple(compile_pattern(p) for p in patterns),
                frozenset(_strings(item.get("users"), f"{where}: users")),
                frozenset(rule_groups),
                anonymous,
                frozenset(actions),
            )
        )
    return Policy(rules, groups)


class WatchedFile(Generic[T]):
    """A file parsed by ``parse(text, origin)``, re-read when it changes (see the module
    docstring). ``current()`` costs one ``stat`` a second at most. A missing file is
    parsed as empty text when ``missing_ok``, else it does not load."""

    def __init__(
        self, path: Path, parse: Callable[[str, str], T], what: str, *, missing_ok: bool = False
    ) -> None:
        self.path = path
        self._parse = parse
        self._what = what
        self._missing_ok = missing_ok
        self._signature: Signature | None = None
        self._next_check = 0.0
        self.value = self._load()  # at start-up: errors reach the caller

    def _stat(self) -> Signature | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> T:
        self._signature = self._stat()
        if self._signature is None and not self._missing_ok:
            raise ValueError(f"{self.path} does not exist")
        try:
            text = self.path.read_text(encoding="utf-8") if self._signature is not None else ""
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path} is not UTF-8 text ({exc}): save it as UTF-8") from None
        return self._parse(text, str(self.path))

    def current(self) -> T:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_INTERVAL
            try:
                if self._stat() != self._signature:
                    self.value = self._load()
                    log.info("%s %s reloaded", self._what, self.path)
            except (OSError, ValueError) as exc:
                log.error("%s %s not reloaded, keeping the one loaded before: %s",
                          self._what, self.path, exc)
        return self.value
