"""Retention policies: which tags of a repository to keep (as Harbor's tag retention rules).

The ``retention:`` section of the registry config file::

    retention:
      interval: 1h            # the online run inside `pybuild serve` (0: never; default)
      untagged_delay: 24h     # an untagged manifest pushed longer ago than this goes
      upload_grace: 1h        # a blob link made more recently than this always stays
      policies:               # the first whose `repositories` match a repository applies
        - repositories: ["app", "team/*"]   # globs: * within a path segment, ** across
          keep:                              # a tag stays if any rule keeps it
            - tags: latest                   # every tag matching (glob, or re:<regex>)
            - tags: "re:^[0-9]+$"
              last: 3                        # the 3 most recently pushed of those
            - pushed_within: 7d              # pushed in the last 7 days
            - pulled_within: 30d             # its manifest pulled in the last 30 days

A repository no policy matches keeps all its tags (its untagged manifests still go). In a
policy, every tag that no rule keeps is deleted; its manifest, once untagged, goes with
the untagged ones (retention.py). Durations are seconds or ``30s``/``5m``/``168h``/``7d``/``7d12h``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cas import units

from .metadata import TagRecord
from .proxy_config import parse_duration

__all__ = ["KeepRule", "Policy", "parse_policies", "parse_retention_duration", "tags_to_delete"]

_RULE_KEYS = ("tags", "last", "pushed_within", "pulled_within")


def parse_retention_duration(value: Any) -> float:
    """:func:`~registry.server.proxy_config.parse_duration`, plus days anywhere in it
    (``7d``, ``7d12h``), as every duration option reads them (:mod:`cas.units`)."""
    if isinstance(value, str) and value.strip() not in ("", "0"):
        try:
            return units.parse_duration(value) / 1e9
        except ValueError:
            try:
                float(value)
            except ValueError:
                raise ValueError(f"expected a duration such as 30s, 5m, 168h, 7d or 7d12h, "
                                 f"got {value!r}") from None
    return parse_duration(value)


def _glob(pattern: str) -> re.Pattern[str]:
    """``**`` matches anything, ``*`` anything but ``/``, ``?`` one such character."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _pattern(value: Any, where: str) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a glob or re:<regex>, got {value!r}")
    if value.startswith("re:"):
        try:
            return re.compile(value[3:])
        except re.error as exc:
            raise ValueError(f"{where}: invalid regex {value[3:]!r}: {exc}") from exc
    return _glob(value)


@dataclass(frozen=True, slots=True)
class KeepRule:
    """Keeps the tags matching ``tags`` (None: all), narrowed by the others when given:
    the ``last`` most recently pushed, those pushed or pulled within so many seconds."""

    tags: re.Pattern[str] | None = None
    last: int | None = None
    pushed_within: float | None = None
    pulled_within: float | None = None

    def keeps(self, tags: list[TagRecord], now: float) -> set[str]:
        chosen = [t for t in tags if self.tags is None or self.tags.fullmatch(t.tag)]
        if self.pushed_within is not None:
            chosen = [t for t in chosen if t.pushed >= now - self.pushed_within]
        if self.pulled_within is not None:
            chosen = [t for t in chosen
                      if t.pulled is not None and t.pulled >= now - self.pulled_within]
        if self.last is not None:
            chosen = sorted(chosen, key=lambda t: (t.pushed, t.tag), reverse=True)[: self.last]
        return {t.tag for t in chosen}


@dataclass(frozen=True, slots=True)
class Policy:
    repositories: tuple[re.Pattern[str], ...]
    keep: tuple[KeepRule, ...]

    def applies_to(self, repo: str) -> bool:
        return any(p.fullmatch(repo) for p in self.repositories)


def _rule(doc: Any, where: str) -> KeepRule:
    if not isinstance(doc, Mapping) or not doc:
        raise ValueError(f"{where}: expected a mapping with some of {', '.join(_RULE_KEYS)}")
    unknown = sorted(str(k) for k in doc if k not in _RULE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_RULE_KEYS)}")
    last = doc.get("last")
    if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
        raise ValueError(f"{where}.last: expected a count of tags (0 or more), got {last!r}")
    durations: dict[str, float | None] = {}
    for key in ("pushed_within", "pulled_within"):
        value = doc.get(key)
        try:
            durations[key] = None if value is None else parse_retention_duration(value)
        except ValueError as exc:
            raise ValueError(f"{where}.{key}: {exc}") from exc
    tags = doc.get("tags")
    return KeepRule(
        tags=None if tags is None else _pattern(tags, f"{where}.tags"),
        last=last,
        pushed_within=durations["pushed_within"],
        pulled_within=durations["pulled_within"],
    )


def parse_policies(value: Any) -> tuple[Policy, ...]:
    """``retention.policies`` (a list; YAML/JSON text from the environment) -> policies;
    ValueError naming the bad key, e.g. ``retention.policies[0].keep[1]: unknown key(s) lst``."""
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"retention.policies: not valid YAML/JSON: {exc}") from exc
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"retention.policies: expected a list of policies, got {value!r}")
    policies = []
    for i, doc in enumerate(value):
        where = f"retention.policies[{i}]"
        if not isinstance(doc, Mapping):
            raise ValueError(f"{where}: expected a mapping with repositories and keep")
        unknown = sorted(str(k) for k in doc if k not in ("repositories", "keep"))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: repositories, keep")
        repos = doc.get("repositories")
        if isinstance(repos, str):
            repos = [repos]
        if not isinstance(repos, list) or not repos:
            raise ValueError(f"{where}.repositories: expected a glob or a list of globs, got {repos!r}")
        patterns = tuple(_pattern(r, f"{where}.repositories[{j}]") for j, r in enumerate(repos))
        keep = doc.get("keep")
        if not isinstance(keep, list):
            raise ValueError(
                f"{where}.keep: expected a list of rules (an empty list deletes every tag), got {keep!r}"
            )
        policies.append(Policy(patterns, tuple(_rule(r, f"{where}.keep[{j}]") for j, r in enumerate(keep))))
    return tuple(policies)


def tags_to_delete(
    policies: tuple[Policy, ...], repo: str, tags: list[TagRecord], now: float
) -> list[TagRecord]:
    """The tags of ``repo`` the first policy that applies to it does not keep (none when
    no policy applies)."""
    for policy in policies:
        if policy.applies_to(repo):
            kept: set[str] = set()
            for rule in policy.keep:
                kept |= rule.keeps(tags, now)
            return [t for t in tags if t.tag not in kept]
    return []
