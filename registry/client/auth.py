"""Registry credentials and the ``WWW-Authenticate`` flows (Basic and Bearer tokens).

Where credentials come from, first match wins:

1. ``PYBUILD_REGISTRY_USER`` / ``PYBUILD_REGISTRY_PASSWORD`` (for CI); when
   ``PYBUILD_REGISTRY_HOST`` is also set they apply to that registry only;
2. Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``credHelpers[host]`` then ``credsStore`` (both run ``docker-credential-<x> get``),
   then ``auths[host].auth`` (base64 ``user:password``).

``pybuild login`` / ``logout`` edit the same file as ``docker login`` does (through the
credential store when ``credsStore`` is set).

The token flow (Docker "Token Authentication Specification"): a 401 carrying
``WWW-Authenticate: Bearer realm="...",service="...",scope="..."`` makes the client GET
``realm?service=...&scope=...`` (with Basic credentials when it has any) and retry with
``Authorization: Bearer <token>``. Tokens are cached per scope set.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ClientError

# GET ``url`` with ``params`` and ``headers``: (status, body). Raises OSError when the
# server cannot be reached.
Fetch = Callable[[str, list[tuple[str, str]], dict[str, str]], Awaitable[tuple[int, bytes]]]

__all__ = [
    "AuthError",
    "Challenge",
    "Credentials",
    "HostAuth",
    "docker_config_path",
    "erase_credentials",
    "lookup_credentials",
    "parse_challenge",
    "store_credentials",
]

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


class AuthError(ClientError):
    """Credentials were missing, refused, or a helper failed; the message says which."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> Challenge:
    """Parse ``Bearer realm="x",service="y",scope="z"`` (or ``Basic realm="x"``)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _PARAM.finditer(rest)}
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}
    return Challenge(scheme.lower(), params)


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read {path}: {exc}; fix or remove the file") from exc
    return doc if isinstance(doc, dict) else {}


def _keys(host: str) -> tuple[str, ...]:
    if host in _HUB_KEYS:
        return _HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def _helper(name: str, action: str, payload: str) -> str:
    try:
        proc = subprocess.run(
            [f"docker-credential-{name}", action],
            input=payload, capture_output=True, text=True, timeout=60, check=False,
        )
    except FileNotFoundError as exc:
        raise AuthError(
            f"credential helper docker-credential-{name} is not installed; install it or "
            "remove it from config.json"
        ) from exc
    if proc.returncode != 0:
        message = (proc.stdout + proc.stderr).strip()
        if "credentials not found" in message.lower():
            return ""
        raise AuthError(f"docker-credential-{name} {action} failed: {message}")
    return proc.stdout


def lookup_credentials(host: str) -> Credentials | None:
    """Credentials for ``host`` (blocking: may run a helper; call in a thread)."""
    user = os.environ.get("PYBUILD_REGISTRY_USER")
    password = os.environ.get("PYBUILD_REGISTRY_PASSWORD")
    only = os.environ.get("PYBUILD_REGISTRY_HOST")
    if user and password is not None and (not only or only == host):
        return Credentials(user, password)
    config = _read_config(docker_config_path())
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    if helper:
        for key in _keys(host):
            out = _helper(helper, "get", key)
            if out:
                doc = json.loads(out)
                return Credentials(doc.get("Username", ""), doc.get("Secret", ""))
    auths = config.get("auths") or {}
    for key in _keys(host):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise AuthError(f"auths[{key!r}].auth in config.json is not base64 user:password") from exc
            return Credentials(user, password)
    return None


def store_credentials(host: str, creds: Credentials) -> Path:
    """Save credentials as ``docker login`` does; returns the config file written."""
    path = docker_config_path()
    config = _read_config(path)
    key = _HUB_KEYS[0] if host in _HUB_KEYS else host
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    auths = config.setdefault("auths", {})
    if helper:
        payload = json.dumps({"ServerURL": key, "Username": creds.username, "Secret": creds.password})
        _helper(helper, "store", payload)
        auths[key] = {}
    else:
        auths[key] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    _write_config(path, config)
    return path


def erase_credentials(host: str) -> bool:
    """Forget ``host``'s credentials (``docker logout``); False if none were stored."""
    path = docker_config_path()
    config = _read_config(path)
    auths = config.get("auths") or {}
    found = [k for k in _keys(host) if k in auths]
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    if helper:
        for key in found or [_keys(host)[0]]:
            _helper(helper, "erase", key)
    for key in found:
        del auths[key]
    if found:
        _write_config(path, config)
    return bool(found)


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent="\t")
    os.replace(tmp, path)


class HostAuth:
    """Authorization state for one registry host: credentials, scheme and cached tokens."""

    def __init__(self, host: str, credentials: Credentials | None = None, *, lookup: bool = True) -> None:
        self.host = host
        self._creds = credentials
        self._looked_up = credentials is not None or not lookup
        self._basic = False  # the registry asked for Basic: send it up front
        self._tokens: dict[frozenset[str], str] = {}
        self._lock = asyncio.Lock()

    async def credentials(self) -> Credentials | None:
        if not self._looked_up:
            self._creds = await asyncio.to_thread(lookup_credentials, self.host)
            self._looked_up = True
        return self._creds

    def header(self, scopes: frozenset[str]) -> str | None:
        """The ``Authorization`` value to send for a request needing ``scopes``, if known."""
        token = self._tokens.get(scopes)
        if token is None and self._tokens:
            # A token for a superset of the scopes serves too.
            token = next((t for s, t in self._tokens.items() if scopes <= s), None)
        if token is not None:
            return f"Bearer {token}"
        if self._basic and self._creds is not None:
            return self._creds.basic()
        return None

    async def answer(self, fetch: Fetch, header: str, scopes: frozenset[str]) -> bool:
        """React to a 401's ``WWW-Authenticate``; True if a retry can now succeed.
        ``fetch`` asks the token server."""
        challenge = parse_challenge(header)
        creds = await self.credentials()
        if challenge.scheme == "basic":
            if creds is None or self._basic:
                return False
            self._basic = True
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        wanted = set(scopes)
        if challenge.params.get("scope"):
            wanted.update(challenge.params["scope"].split(" "))
        key = frozenset(wanted)
        async with self._lock:
            if key in self._tokens and self.header(scopes) is not None and scopes != key:
                return True
            token = await self._fetch_token(fetch, challenge, key, creds)
            self._tokens[key] = token
            if key != scopes:
                self._tokens[scopes] = token
        return True

    async def _fetch_token(
        self, fetch: Fetch, challenge: Challenge, scopes: frozenset[str], creds: Credentials | None
    ) -> str:
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", s) for s in sorted(scopes))
        headers = {"Authorization": creds.basic()} if creds is not None else {}
        realm = challenge.params["realm"]
        try:
            status, body = await fetch(realm, params, headers)
        except OSError as exc:
            raise AuthError(f"cannot reach token server {realm} for {self.host}: {exc}") from exc
        if status != 200:
            hint = "check the credentials (pybuild login)" if status in (401, 403) else ""
            raise AuthError(
                f"token server {realm} refused {self.host} (HTTP {status}): "
                f"{body[:200].decode('utf-8', 'replace')} {hint}".strip()
            )
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm} answered without a token for {self.host}")
        return token
