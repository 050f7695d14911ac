"""Access scopes (Distribution's "Token Scope Documentation") and what a request needs.

A scope names a resource and actions: ``repository:team/app:pull,push``,
``registry:catalog:*``. Tokens carry granted scopes in their ``access`` claim::

    "access": [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]

What a request needs follows CNCF Distribution (``registry/handlers/app.go``):

    GET, HEAD on a repository            repository:<name>:pull
    POST, PUT, PATCH on a repository     repository:<name>:pull and push
    DELETE on a repository               repository:<name>:delete
    DELETE of a piece upload session     repository:<name>:pull and push (part of a push)
    GET /v2/_catalog                     registry:catalog:*
    GET /v2/ and extension discovery     a valid token, no scope
    OPTIONS (CORS preflight, ``Allow``)   a valid token, no scope

The action ``*`` grants every action on its resource. A request naming another repository
in ``from`` (a cross-repository mount, ``POST ...?mount=<d>&from=<repo>``) also asks for
``repository:<from>:pull``, so the challenge names it and clients fetch a token with it;
unlike Distribution it is not required: without it the mount is not done and the client
gets an ordinary upload session (the spec's 202 answer), so it still pushes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "CATALOG",
    "Access",
    "Grant",
    "PullFilter",
    "ScopeError",
    "mount_source_access",
    "parse_scope",
    "parse_scopes",
    "required_access",
    "scope_param",
]

ACTIONS = ("pull", "push", "delete", "*")
_MAX_SCOPES = 64  # per token request: each one is a policy lookup
_MAX_SCOPE = 512  # characters in one


class ScopeError(ValueError):
    """A scope string that does not parse; the message names it."""


@dataclass(frozen=True, slots=True, order=True)
class Access:
    """One action on one resource (``repository``/``registry`` + name)."""

    type: str
    name: str
    action: str

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{self.action}"

    def detail(self) -> dict[str, str]:
        """As Distribution reports it in an UNAUTHORIZED error's ``detail``."""
        return {"Type": self.type, "Class": "", "Name": self.name, "Action": self.action}


def parse_scope(text: str) -> list[Access]:
    """``type[(class)]:name:action[,action...]`` -> one Access per action.

    The name may itself contain ``:`` (a ``host:port/...`` name), so the type is everything
    before the first ``:`` and the actions everything after the last one. A resource class
    (``repository(plugin):...``) is accepted and ignored, as Distribution does.
    """
    if len(text) > _MAX_SCOPE:
        raise ScopeError(f"scope {text[:80]!r}... is {len(text)} characters long, over the limit "
                         f"of {_MAX_SCOPE} (a repository name has at most 255)")
    kind, sep1, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep1 or not sep2 or not kind or not name or not actions:
        raise ScopeError(f"invalid scope {text[:80]!r}: expected TYPE:NAME:ACTION[,ACTION...]")
    kind = kind.split("(", 1)[0]
    out = [Access(kind, name, a) for a in dict.fromkeys(actions.split(",")) if a]
    if not out:
        raise ScopeError(f"invalid scope {text[:80]!r}: no action")
    return out


def parse_scopes(texts: Iterable[str]) -> list[Access]:
    """Space-separated scopes (a ``scope`` parameter may hold several); at most 64."""
    out: list[Access] = []
    for text in texts:
        for part in text.split():
            out.extend(parse_scope(part))
            if len(out) > _MAX_SCOPES:
                raise ScopeError(f"too many scopes requested (more than {_MAX_SCOPES})")
    return out


def scope_param(wanted: Iterable[Access]) -> str:
    """The ``scope`` value of a challenge: one ``type:name:a,b`` per resource."""
    by_resource: dict[tuple[str, str], list[str]] = {}
    for access in wanted:
        actions = by_resource.setdefault((access.type, access.name), [])
        if access.action not in actions:
            actions.append(access.action)
    return " ".join(f"{t}:{n}:{','.join(a)}" for (t, n), a in by_resource.items())


class PullFilter:
    """Answers whether the caller may pull a repository (the catalog lists only those)."""

    def may_pull(self, repo: str) -> bool:
        raise NotImplementedError


class Grant(PullFilter):
    """The access a token grants: (type, name) -> actions; ``*`` means every action."""

    __slots__ = ("_actions",)

    def __init__(self, accesses: Iterable[Access] = ()) -> None:
        self._actions: dict[tuple[str, str], set[str]] = {}
        for access in accesses:
            self._actions.setdefault((access.type, access.name), set()).add(access.action)

    def allows(self, access: Access) -> bool:
        actions = self._actions.get((access.type, access.name))
        return actions is not None and ("*" in actions or access.action in actions)

    def may_pull(self, repo: str) -> bool:
        return self.allows(Access("repository", repo, "pull"))

    def may_push(self, repo: str) -> bool:
        return self.allows(Access("repository", repo, "push"))

    def missing(self, wanted: Iterable[Access]) -> list[Access]:
        return [a for a in wanted if not self.allows(a)]

    def __iter__(self) -> Iterator[Access]:
        for (kind, name), actions in self._actions.items():
            for action in sorted(actions):
                yield Access(kind, name, action)

    def claim(self) -> list[dict[str, object]]:
        """The ``access`` claim of a token granting exactly this."""
        return [
            {"type": kind, "name": name, "actions": sorted(actions)}
            for (kind, name), actions in self._actions.items()
        ]


CATALOG = Access("registry", "catalog", "*")


def mount_source_access(source: str) -> Access:
    """What a mount from ``source`` asks for (not required, see the module docstring)."""
    return Access("repository", source, "pull")


def required_access(method: str, route: str, repo: str | None) -> list[Access]:
    """What ``method`` on ``route`` (a routes.Route name) of ``repo`` needs; see the table
    in the module docstring. An empty list: any valid token will do."""
    if repo is None:
        return [CATALOG] if route == "catalog" and method != "OPTIONS" else []
    if method == "OPTIONS":  # it reads and changes nothing (no records in Distribution)
        return []
    if method in ("GET", "HEAD"):
        return [Access("repository", repo, "pull")]
    if method == "DELETE" and route != "piece-upload":
        return [Access("repository", repo, "delete")]
    return [Access("repository", repo, "pull"), Access("repository", repo, "push")]
