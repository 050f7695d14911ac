"""Robot accounts for CI: a secret with an expiry and a scope, revocable.

``pybuild robot create NAME --scope repository:app:pull,push --expires 30d`` prints a
secret once; the robot logs in to the built-in token server as user ``robot+NAME`` with
that secret as its password (``docker login -u robot+NAME --password-stdin``). Its tokens
grant the intersection of what it asks for and its scopes (repository names in scopes may
be patterns, as in :mod:`.policy`), and never outlive the robot. A revoked or expired
robot gets no new token, and the tokens it holds stop working at once (the registry
checks its own tokens' robots on every request); so do the tokens a robot got before it
was replaced (``create`` of its name again: a rotated secret): a robot's tokens name
its creation time.

Robots live in ``robots.json`` in the storage directory, next to ``registry.db``::

    {"robots": {"ci": {"secret_sha256": "<hex>", "scopes": ["repository:app:pull,push"],
                       "expires": 1767225600.0, "created": 1764633600.0}}}

Only a SHA-256 of each secret is kept (the secrets are 256 random bits, so a slow hash
adds nothing). The server re-reads the file when it changes; the commands rewrite it
atomically under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .access import Access, parse_scopes
from .policy import compile_pattern

__all__ = [
    "PREFIX",
    "Robot",
    "RobotError",
    "RobotTable",
    "create_robot",
    "list_robots",
    "parse_duration",
    "parse_robots",
    "revoke_robot",
    "robots_path",
]

PREFIX = "robot+"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^(\d{1,9})([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class RobotError(ValueError):
    """A robot command or file that cannot be used; the message says what to do."""


def robots_path(storage: Path) -> Path:
    return storage / "robots.json"


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600`` (seconds) -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise RobotError(f"invalid duration {text!r}: use e.g. 3600, 90m, 12h, 30d, 4w")
    return float(int(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True, slots=True)
class Robot:
    name: str
    secret_sha256: str
    scopes: tuple[str, ...]
    expires: float
    created: float

    @property
    def user(self) -> str:
        return PREFIX + self.name

    def accesses(self) -> list[Access]:
        return parse_scopes(self.scopes)

    def actions(self, repo: str) -> set[str]:
        """What the robot's scopes allow on ``repo`` (``*`` expanded)."""
        out: set[str] = set()
        for access in self.accesses():
            if access.type == "repository" and compile_pattern(access.name).match(repo):
                out.add(access.action)
        return {"pull", "push", "delete"} if "*" in out else out

    def to_json(self) -> dict[str, Any]:
        return {
            "secret_sha256": self.secret_sha256,
            "scopes": list(self.scopes),
            "expires": self.expires,
            "created": self.created,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_robots(text: str, origin: str) -> dict[str, Robot]:
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
        entries = doc["robots"]
        if not isinstance(entries, dict):
            raise TypeError("robots is not an object")
        out = {}
        for name, entry in entries.items():
            out[name] = Robot(
                name,
                str(entry["secret_sha256"]),
                tuple(str(s) for s in entry["scopes"]),
                float(entry["expires"]),
                float(entry.get("created", 0.0)),
            )
            out[name].accesses()  # the scopes parse
    except (ValueError, TypeError, KeyError) as exc:
        raise RobotError(f"{origin}: not a robots file: {exc}") from None
    return out


class RobotTable:
    """The robots in force: credential checks for the token server."""

    def __init__(self, robots: dict[str, Robot]) -> None:
        self.robots = robots

    def get(self, user: str, now: float | None = None) -> Robot | None:
        """The live (not expired) robot behind user name ``robot+NAME``, else None."""
        if not user.startswith(PREFIX):
            return None
        robot = self.robots.get(user[len(PREFIX):])
        if robot is None or robot.expires <= (time.time() if now is None else now):
            return None
        return robot

    def check(self, user: str, password: str) -> Robot | None:
        robot = self.get(user)
        if robot is None or not hmac.compare_digest(robot.secret_sha256, _digest(password)):
            return None
        return robot


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Robot]]:
    """The robots of ``path`` to change in place; written back atomically on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        robots = parse_robots(path.read_text() if path.exists() else "", str(path))
        yield robots
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"robots": {n: r.to_json() for n, r in sorted(robots.items())}}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def create_robot(path: Path, name: str, scopes: list[str], expires_in: float) -> str:
    """Create (or replace) robot ``name``; returns its secret (shown once)."""
    if not _NAME.match(name):
        raise RobotError(
            f"invalid robot name {name!r}: use up to 64 of [a-z0-9._-], starting with a letter or digit"
        )
    if not scopes:
        raise RobotError("a robot needs at least one --scope, e.g. repository:app:pull,push")
    accesses = parse_scopes(scopes)
    bad = [a.scope() for a in accesses if a.type != "repository" or a.action not in ("pull", "push", "delete", "*")]
    if bad:
        raise RobotError(f"unsupported scope(s) {', '.join(bad)}: use repository:NAME:pull,push,delete")
    secret = "pbrobot_" + secrets.token_urlsafe(32)
    now = time.time()
    with _locked(path) as robots:
        robots[name] = Robot(name, _digest(secret), tuple(scopes), now + expires_in, now)
    return secret


def revoke_robot(path: Path, name: str) -> bool:
    """Remove robot ``name``; False if there was none."""
    with _locked(path) as robots:
        return robots.pop(name, None) is not None


def list_robots(path: Path) -> list[Robot]:
    if not path.exists():
        return []
    return sorted(parse_robots(path.read_text(), str(path)).values(), key=lambda r: r.name)
