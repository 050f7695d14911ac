"""Registry credentials and the ``WWW-Authenticate`` flows (Basic and Bearer tokens).

Where credentials come from, first match wins:

1. ``PYBUILD_REGISTRY_USER`` / ``PYBUILD_REGISTRY_PASSWORD`` (for CI); when
   ``PYBUILD_REGISTRY_HOST`` is also set they apply to that registry only;
2. Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``credHelpers[host]`` then ``credsStore`` (both run ``docker-credential-<x> get``),
   then ``auths[host].identitytoken`` (an OAuth2 refresh token, sent to the token
   server in the OAuth2 form POST; so is the secret of a helper's ``<token>`` user),
   then ``auths[host].auth`` (base64 ``user:password``).

``pybuild login`` / ``logout`` edit the same file as ``docker login`` does (through the
credential store when ``credsStore`` is set).

The token flow (Docker "Token Authentication Specification"): a 401 carrying
``WWW-Authenticate: Bearer realm="...",service="...",scope="..."`` makes the client GET
``realm?service=...&scope=...`` (with Basic credentials when it has any) and retry with
``Authorization: Bearer <token>``. Tokens are cached per scope set.

Concurrent requests share one answer: the requests that meet the first 401 together all
wait for the one credential lookup (a credential helper runs once) and the one token
fetch per scope set, then retry with the result. A request is refused for good only when
it already carried the credentials (or the current token) it would retry with; the
:class:`AuthError` then says where the credentials came from and what to do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from ..errors import DENIED, UNAUTHORIZED, RegistryError
from .docker_config import ConfigError, docker_config_path, read_config, server_host, write_config
from .errors import ClientError


class Fetch(Protocol):
    """GET ``url`` with ``params`` and ``headers`` (POST ``data`` when given): (status,
    body). Raises OSError when the server cannot be reached."""

    def __call__(self, url: str, params: list[tuple[str, str]], headers: dict[str, str],
                 data: bytes | None = None) -> Awaitable[tuple[int, bytes]]: ...


__all__ = [
    "ENV_SOURCE",
    "AuthError",
    "Challenge",
    "Credentials",
    "HostAuth",
    "docker_config_path",
    "erase_credentials",
    "login_name",
    "lookup_credentials",
    "parse_challenge",
    "store_credentials",
]

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


ENV_SOURCE = "PYBUILD_REGISTRY_USER/PYBUILD_REGISTRY_PASSWORD"
# The user name under which Docker's credential stores keep an identity token (an OAuth2
# refresh token, from `docker login` to ACR and others) instead of a password.
IDENTITY_TOKEN_USER = "<token>"
HELPER_TIMEOUT = 60.0  # seconds a credential helper may take (it may wait for a keyring)


class AuthError(ClientError, RegistryError):
    """Credentials were missing, refused, or a helper failed; the message says which, where
    the credentials came from and what to do. A :class:`RegistryError` (UNAUTHORIZED, or
    DENIED for 403) so that every caller that handles registry refusals handles it."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(DENIED if status == 403 else UNAUTHORIZED, message, status=status)
        self.args = (message,)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, and where they came from (``source``, for messages:
    ``PYBUILD_REGISTRY_USER/PYBUILD_REGISTRY_PASSWORD``, a credential helper, an
    ``auths`` entry of config.json, or the flags of ``pybuild login``; ``fix``: what to
    do when they are refused, when it is not ``pybuild login``)."""

    username: str
    password: str = field(repr=False)
    source: str = field(default="", compare=False)
    fix: str = field(default="", compare=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str]


# Compiled on first use (re caches it): only a registry that asks for credentials needs it.
_PARAM = r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))'


def parse_challenge(header: str) -> Challenge:
    """Parse ``Bearer realm="x",service="y",scope="z"`` (or ``Basic realm="x"``)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in re.finditer(_PARAM, rest)}
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}
    return Challenge(scheme.lower(), params)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return read_config(path)
    except ConfigError as exc:
        raise AuthError(str(exc)) from exc


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr, flush=True)


def _keys(host: str) -> tuple[str, ...]:
    if host in _HUB_KEYS:
        return _HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def _auths_keys(auths: dict[str, Any], host: str) -> list[str]:
    """The ``auths`` keys that name ``host``: the usual forms first, then any other key
    Docker would match to it (``https://host/``, ``http://host/v2/``: by its host)."""
    usual = _keys(host)
    return [k for k in usual if k in auths] + [
        k for k in auths if k not in usual and server_host(k) in (usual if host in _HUB_KEYS else (host,))]


def _helper_for(config: dict[str, Any], host: str, path: Path) -> tuple[str, str] | None:
    """The credential helper config.json names for ``host``, and where it names it."""
    named = (config.get("credHelpers") or {}).get(host)
    if named:
        return str(named), f"credHelpers in {path}"
    if config.get("credsStore"):
        return str(config["credsStore"]), f"credsStore in {path}"
    return None


def _helper(name: str, action: str, payload: str, origin: str) -> str:
    """Run ``docker-credential-NAME ACTION`` with ``payload`` on stdin; its stdout, or ""
    when it has no credentials. ``origin`` (where config.json names it) is in every error."""
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [program, action],
            input=payload, capture_output=True, text=True, timeout=HELPER_TIMEOUT, check=False,
        )
    except FileNotFoundError as exc:
        raise AuthError(f"credential helper {program} is not installed ({origin}); install "
                        "it, or remove it from the file") from exc
    except subprocess.TimeoutExpired as exc:
        raise AuthError(f"{program} {action} did not answer within {HELPER_TIMEOUT:g} s "
                        f"({origin}); unlock or fix the helper, or remove it from the "
                        "file") from exc
    except OSError as exc:
        raise AuthError(f"cannot run {program} ({origin}): {exc.strerror or exc}; fix the "
                        "helper, or remove it from the file") from exc
    if proc.returncode != 0:
        message = " ".join((proc.stdout + proc.stderr).split())
        if "credentials not found" in message.lower():
            return ""
        raise AuthError(f"{program} {action} failed: {message[:300]} ({origin}); fix the "
                        "helper, or remove it from the file")
    return proc.stdout


def lookup_credentials(host: str) -> Credentials | None:
    """Credentials for ``host`` (blocking: may run a helper; call in a thread), with the
    place they were found in ``source``."""
    user = os.environ.get("PYBUILD_REGISTRY_USER")
    password = os.environ.get("PYBUILD_REGISTRY_PASSWORD")
    only = os.environ.get("PYBUILD_REGISTRY_HOST")
    if user and password is not None and (not only or only == host):
        return Credentials(user, password, ENV_SOURCE)
    path = docker_config_path()
    try:
        config = read_config(path)
    except ConfigError as exc:
        # As Docker: a file it cannot read is warned of and the registry asked without
        # credentials (an anonymous token may be all a pull needs).
        _warn_once(f"WARNING: {exc}; going on without the credentials it holds")
        return None
    helper = _helper_for(config, host, path)
    if helper is not None:
        name, origin = helper
        for key in _keys(host):
            out = _helper(name, "get", key, origin)
            if out:
                try:
                    doc = json.loads(out)
                    found = Credentials(str(doc.get("Username", "")), str(doc.get("Secret", "")),
                                        f"credential helper docker-credential-{name} ({origin})")
                except (ValueError, AttributeError) as exc:
                    raise AuthError(f"docker-credential-{name} get {key} answered something "
                                    f"that is not its JSON ({origin}); fix or reinstall the "
                                    "helper") from exc
                return found
    auths = config.get("auths") or {}
    for key in _auths_keys(auths, host):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("identitytoken") and isinstance(entry["identitytoken"], str):
            return Credentials(IDENTITY_TOKEN_USER, entry["identitytoken"],
                               f"auths[{key!r}].identitytoken in {path}")
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise AuthError(f"auths[{key!r}].auth in {path} is not base64 user:password; "
                                f"run `pybuild login {login_name(host)}` again") from exc
            return Credentials(user, password, f"auths[{key!r}] in {path}")
        # Written out instead of "auth" (by hand, or by tools that do so): Docker reads
        # these fields too.
        if (isinstance(entry, dict) and isinstance(entry.get("username"), str)
                and isinstance(entry.get("password"), str)):
            return Credentials(entry["username"], entry["password"], f"auths[{key!r}] in {path}")
    return None


def login_name(host: str) -> str:
    """The name to give ``pybuild login`` for ``host`` (Docker Hub's API host is docker.io)."""
    return "docker.io" if host in _HUB_KEYS else host


def store_credentials(host: str, creds: Credentials) -> Path:
    """Save credentials as ``docker login`` does; returns the config file written."""
    path = docker_config_path()
    config = _read_config(path)
    key = _HUB_KEYS[0] if host in _HUB_KEYS else host
    helper = _helper_for(config, host, path)
    auths = config.setdefault("auths", {})
    if helper is not None:
        payload = json.dumps({"ServerURL": key, "Username": creds.username, "Secret": creds.password})
        _helper(helper[0], "store", payload, helper[1])
        auths[key] = {}
    else:
        auths[key] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    write_config(path, config)
    return path


def erase_credentials(host: str) -> bool:
    """Forget ``host``'s credentials (``docker logout``); False if none were stored."""
    path = docker_config_path()
    config = _read_config(path)
    auths = config.get("auths") or {}
    found = _auths_keys(auths, host)
    helper = _helper_for(config, host, path)
    if helper is not None:
        for key in found or [_keys(host)[0]]:
            _helper(helper[0], "erase", key, helper[1])
    for key in found:
        del auths[key]
    if found:
        write_config(path, config)
    return bool(found)


class HostAuth:
    """Authorization state for one registry host: credentials, scheme and cached tokens.

    Shared by every request to the host; see the module docstring for how concurrent
    requests share one credential lookup and one token fetch per scope set."""

    def __init__(self, host: str, credentials: Credentials | None = None, *, lookup: bool = True) -> None:
        self.host = host
        self._creds = credentials
        self._looked_up = credentials is not None or not lookup
        self._lookup_error: AuthError | None = None
        self._lookup_lock = asyncio.Lock()
        self._basic = False  # the registry asked for Basic: send it up front
        self._tokens: dict[frozenset[str], str] = {}
        self._token_locks: dict[frozenset[str], asyncio.Lock] = {}
        # token -> (when to fetch it anew, the challenge and scope set it was fetched for)
        self._renewals: dict[str, tuple[float, Challenge, frozenset[str]]] = {}
        # A token server's refusal, per scope set: the requests that waited for that fetch
        # get it too, instead of asking again one after the other.
        self._refusals: dict[frozenset[str], AuthError] = {}

    async def credentials(self) -> Credentials | None:
        """The host's credentials, looked up once however many requests ask at once."""
        if not self._looked_up:
            async with self._lookup_lock:
                if self._lookup_error is not None:
                    raise self._lookup_error
                if not self._looked_up:
                    try:
                        self._creds = await asyncio.to_thread(lookup_credentials, self.host)
                    except AuthError as exc:
                        self._lookup_error = exc
                        raise
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

    async def answer(self, fetch: Fetch, header: str, scopes: frozenset[str],
                     sent: str | None = None) -> bool:
        """React to a 401's ``WWW-Authenticate``; True if a retry can now succeed.

        ``sent`` is the ``Authorization`` the refused request carried: when another
        request has meanwhile found what to send (Basic credentials, a fresh token), the
        answer is True at once; when the request already carried it, Basic is refused
        for good (False) and a token is fetched anew (it may have expired). ``fetch``
        asks the token server."""
        challenge = parse_challenge(header)
        creds = await self.credentials()
        if challenge.scheme == "basic":
            if creds is None or sent == creds.basic():
                return False
            self._basic = True
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        wanted = set(scopes)
        if challenge.params.get("scope"):
            wanted.update(challenge.params["scope"].split(" "))
        key = frozenset(wanted)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._tokens.get(key)
            if current is not None and f"Bearer {current}" != sent:
                self._tokens[scopes] = current
                return True  # fetched by another request meanwhile
            if key in self._refusals:
                raise self._refusals[key]
            await self._fetch_into(fetch, challenge, key, scopes, creds)
        return True

    async def renew(self, fetch: Fetch, scopes: frozenset[str]) -> None:
        """Fetch anew the token a request for ``scopes`` would carry when it is about to
        expire (its ``expires_in``; 60 s when the token server says nothing), as Docker
        does: a long pull or push does not meet a 401 (and send a chunk twice) each time
        its token runs out. An expired token the registry refuses is fetched anew too
        (:meth:`answer`)."""
        sent = self.header(scopes)
        renewal = self._renewals.get(sent.removeprefix("Bearer ")) if sent else None
        if renewal is None or time.monotonic() < renewal[0]:
            return
        _, challenge, key = renewal
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            current = self._tokens.get(key)
            if current is not None and f"Bearer {current}" != sent:
                self._tokens[scopes] = current  # renewed by another request meanwhile
                return
            await self._fetch_into(fetch, challenge, key, scopes, await self.credentials())

    async def _fetch_into(self, fetch: Fetch, challenge: Challenge, key: frozenset[str],
                          scopes: frozenset[str], creds: Credentials | None) -> None:
        """Fetch a token for ``key`` (the requests' ``scopes`` and the challenge's) and
        keep it for both."""
        started = time.monotonic()
        try:
            token, lifetime = await self._fetch_token(fetch, challenge, key, creds)
        except AuthError as exc:
            if exc.status in (401, 403):
                self._refusals[key] = exc
            raise
        for old in {self._tokens.get(key), self._tokens.get(scopes)} - {None, token}:
            self._renewals.pop(str(old), None)
        self._renewals[token] = (started + lifetime - min(10.0, lifetime / 10), challenge, key)
        self._tokens[key] = token
        if key != scopes:
            self._tokens[scopes] = token

    def refused(self, challenge: str, sent: str | None, scopes: frozenset[str],
                reason: str = "", status: int = 401) -> AuthError:
        """The error for a request the registry refused for good: what was sent, where the
        credentials came from, and what to do. ``reason``: the registry's own words."""
        creds = self._creds
        login = f"`pybuild login {login_name(self.host)}`"
        said = f" ({reason})" if reason else ""
        scheme = parse_challenge(challenge).scheme if challenge else ""
        if scheme and scheme not in ("basic", "bearer"):
            return AuthError(f"{self.host} asks for {scheme!r} authentication{said}, which "
                             "pybuild does not speak; use a registry account with Basic or "
                             f"token authentication and {login}", status)
        if creds is None:
            return AuthError(f"{self.host} asks for credentials{said} and there are no "
                             f"credentials for it (none in {ENV_SOURCE}, nor in "
                             f"{docker_config_path()}); run {login}", status)
        who = f"user {creds.username!r} (credentials from {creds.source or 'the caller'})"
        if sent is not None and sent.startswith("Bearer "):
            what = ", ".join(sorted(scopes)) or "this request"
            may = f"{creds.fix}, for a user who may" if creds.fix else (
                f"run {login} as a user who may")
            return AuthError(f"{self.host} refused {who} access to {what}{said}: the "
                             "repository may not exist, or the user may not use it; check "
                             f"the name, or {may}", status)
        if creds.fix:
            fix = creds.fix
        elif creds.source == ENV_SOURCE:
            fix = (f"set {ENV_SOURCE} right, or unset them and run {login}")
        elif creds.source.startswith("the password given"):
            fix = f"check the user name and password given to {login}"
        else:
            fix = f"run {login} with the right user name and password"
        return AuthError(f"{self.host} refused the credentials of {who}{said}; {fix}", status)

    async def _fetch_token(
        self, fetch: Fetch, challenge: Challenge, scopes: frozenset[str], creds: Credentials | None
    ) -> tuple[str, float]:
        """The token and the seconds it lasts."""
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        realm = challenge.params["realm"]
        try:
            if creds is not None and creds.username == IDENTITY_TOKEN_USER:
                # An identity token is a refresh token: the OAuth2 form POST, as Docker
                # and containerd send it (GET with Basic would send it as a password).
                form = [("grant_type", "refresh_token"), ("refresh_token", creds.password),
                        ("client_id", "pybuild"), *params, ("scope", " ".join(sorted(scopes)))]
                status, body = await fetch(
                    realm, [], {"Content-Type": "application/x-www-form-urlencoded"},
                    urlencode(form).encode())
            else:
                if creds is not None and creds.username:
                    params.append(("account", creds.username))  # as Docker sends it
                params.extend(("scope", s) for s in sorted(scopes))
                headers = {"Authorization": creds.basic()} if creds is not None else {}
                status, body = await fetch(realm, params, headers)
        except OSError as exc:
            raise AuthError(f"cannot reach token server {realm} for {self.host}: {exc}; check "
                            "that it is running and reachable") from exc
        if status in (401, 403):
            said = body[:200].decode("utf-8", "replace").strip()
            error = self.refused("", None, scopes, said, status)
            error.args = (f"token server {realm}: {error.args[0]}",)
            raise error
        if status != 200:
            raise AuthError(
                f"token server {realm} for {self.host} answered HTTP {status}: "
                f"{body[:200].decode('utf-8', 'replace')}; try again later".strip()
            )
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = doc.get("expires_in")
        except (ValueError, AttributeError):
            token = lifetime = None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm} answered without a token for {self.host}")
        # The token specification's default, and its least a token server may give.
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = 60
        return token, float(lifetime)
