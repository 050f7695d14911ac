"""HTTP basic authentication against an htpasswd file of bcrypt entries.

This is what ``docker login`` speaks to a registry configured like CNCF Distribution's
``auth: htpasswd``: any request without valid credentials gets ``401 UNAUTHORIZED`` with
``WWW-Authenticate: Basic realm="<realm>"``. Access model: an authenticated user may read
and write every repository (the same as Distribution's htpasswd mode).

- bcrypt is deliberately slow (~60 ms at cost 10), so checks run on a small thread pool of
  their own, never on the event loop, and concurrent checks of the same credentials share
  one run.
- A user name that is not in the file is checked against a dummy hash of the file's
  usual cost: the answer takes as long as for a known user with a wrong password, so the
  time does not tell who exists.
- A successful (user, password) pair is remembered for :data:`CACHE_SECONDS` in a bounded
  LRU (:data:`CACHE_ENTRIES`), keyed by an HMAC of the credentials under a per-process
  random key (the password itself is never kept); the cache is dropped whenever the users
  change.
- The file is re-read when it changes: its mtime, size and inode are looked at, at most
  every :data:`RELOAD_INTERVAL` seconds, when a request needs authenticating. A file that
  no longer parses is logged and the users loaded before are kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiofiles
import aiofiles.os
import bcrypt
from aiohttp import web

from ..errors import UNAUTHORIZED, RegistryError

__all__ = [
    "CACHE_ENTRIES",
    "CACHE_SECONDS",
    "RELOAD_INTERVAL",
    "Authorizer",
    "BasicAuth",
    "Htpasswd",
    "load_htpasswd",
    "parse_htpasswd",
    "read_htpasswd",
]

log = logging.getLogger("pybuild.registry")

CACHE_SECONDS = 300.0
CACHE_ENTRIES = 1024
RELOAD_INTERVAL = 1.0
_DEFAULT_COST = 10  # for a file without users (every name is unknown then)

# bcrypt runs here: bounded, and not queued behind other work on the default executor.
_bcrypt_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")

Signature = tuple[int, int, int]  # st_mtime_ns, st_size, st_ino


def parse_htpasswd(text: str, origin: str) -> dict[str, bytes]:
    """``user:hash`` lines -> {user: hash}; only bcrypt hashes ($2a$, $2b$, $2y$) are valid.

    Raises ValueError naming ``origin`` and the line for anything else, so a misconfigured
    server fails at start (or keeps its users on a reload) rather than refusing every login.
    """
    entries: dict[str, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{origin}:{lineno}: expected 'user:bcrypt-hash'")
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or not _cost(hashed.encode()):
            raise ValueError(
                f"{origin}:{lineno}: user {user!r} has no bcrypt hash; "
                "create entries with 'htpasswd -B' (bcrypt is the only supported scheme)"
            )
        entries[user] = hashed.encode()
    return entries


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """Read and parse ``path`` (see :func:`parse_htpasswd`); for start-up, before serving."""
    return parse_htpasswd(path.read_text(), str(path))


def _cost(hashed: bytes) -> int:
    """The cost of a ``$2?$NN$...`` hash, 0 if it has none."""
    text = hashed[4:6]
    if hashed[6:7] != b"$" or not text.isdigit() or not 4 <= int(text) <= 31:
        return 0
    return int(text)


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """A bcrypt hash of a random password at the cost most of ``users`` have."""
    costs = Counter(_cost(h) for h in users.values())
    cost = costs.most_common(1)[0][0] if costs else _DEFAULT_COST
    return bcrypt.hashpw(secrets.token_bytes(18), bcrypt.gensalt(rounds=cost))


@dataclass(frozen=True, slots=True)
class Htpasswd:
    """A parsed htpasswd file: its users, a dummy hash of their cost, and the file's
    signature (mtime, size, inode) when it was read."""

    path: Path | None
    users: dict[str, bytes]
    dummy: bytes
    signature: Signature | None = None

    @classmethod
    def load(cls, path: Path) -> Htpasswd:
        """Read ``path`` synchronously (at start-up); ValueError if unusable."""
        try:
            signature = _signature(os.stat(path))
            users = load_htpasswd(path)
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        return cls(path, users, dummy_hash(users), signature)

    @classmethod
    def of(cls, users: dict[str, bytes]) -> Htpasswd:
        return cls(None, users, dummy_hash(users))


def _unreadable(path: Path, exc: OSError) -> ValueError:
    """What to tell the operator when the htpasswd file ``path`` cannot be read."""
    where = "(auth.htpasswd.path in the configuration, or --htpasswd)"
    if exc.errno == errno.ENOENT:
        return ValueError(f"htpasswd file {path} does not exist: create it with "
                          f"'htpasswd -Bc {path} USER' (Debian: apt-get install apache2-utils), "
                          f"or name the right file {where}")
    if exc.errno == errno.EISDIR:
        return ValueError(f"htpasswd path {path} is a directory, not a file of "
                          f"'user:bcrypt-hash' lines: name the file itself {where}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ValueError(f"htpasswd file {path} cannot be read by this user "
                          f"({exc.strerror}): make it readable by the user that runs "
                          "the registry")
    return ValueError(f"htpasswd file {path} cannot be read: {exc.strerror or exc}")


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def read_htpasswd(path: Path) -> Htpasswd:
    """Read and parse ``path`` without blocking the event loop; ValueError if unusable."""
    try:
        signature = _signature(await aiofiles.os.stat(path))
        async with aiofiles.open(path, encoding="utf-8") as f:
            text = await f.read()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    loop = asyncio.get_running_loop()
    users = parse_htpasswd(text, str(path))
    dummy = await loop.run_in_executor(_bcrypt_pool, dummy_hash, users)
    return Htpasswd(path, users, dummy, signature)


class Authorizer(Protocol):
    """What the middleware asks of an authentication scheme (basic here, bearer tokens in
    :mod:`.tokens`)."""

    async def authorize(self, request: web.Request) -> str:
        """The caller's user name if the request may proceed; raises UNAUTHORIZED (401)
        with the scheme's challenge otherwise."""
        ...


class BasicAuth:
    """Checks ``Authorization: Basic`` headers; see the module docstring."""

    def __init__(self, table: Htpasswd | dict[str, bytes], realm: str) -> None:
        self.realm = realm
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self._generation = 0
        self._next_check = time.monotonic() + RELOAD_INTERVAL
        self._reloading: asyncio.Lock | None = None
        self.table = table if isinstance(table, Htpasswd) else Htpasswd.of(table)

    @property
    def users(self) -> dict[str, bytes]:
        return self.table.users

    @property
    def source(self) -> Path | None:
        return self.table.path

    def use(self, table: Htpasswd) -> None:
        """Serve ``table`` from now on; forget every remembered login."""
        self.table = table
        self._generation += 1
        self._ok.clear()
        self._pending.clear()

    async def refresh(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed since it was read (or if ``force``); True if
        the users were replaced. A file that cannot be used is logged and ignored."""
        path = self.source
        if path is None:
            return False
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            try:
                signature = _signature(await aiofiles.os.stat(path))
                if signature == self.table.signature and not force:
                    return False
                table = await read_htpasswd(path)
            except (OSError, ValueError) as exc:
                log.error(
                    "htpasswd %s not reloaded, keeping its %d user(s): %s",
                    path, len(self.users), exc,
                )
                return False
            self.use(table)
        log.info("htpasswd %s reloaded: %d user(s)", path, len(table.users))
        return True

    def challenge(self, message: str) -> RegistryError:
        return UNAUTHORIZED(
            message, headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'}
        )

    async def authorize(self, request: web.Request) -> str:
        return await self.authenticate(request.headers.get("Authorization"))

    async def authenticate(self, header: str | None) -> str:
        """The user name for a valid header; raises UNAUTHORIZED (401) otherwise."""
        now = time.monotonic()
        if now >= self._next_check and self.source is not None:
            self._next_check = now + RELOAD_INTERVAL
            await self.refresh()
        if not header:
            raise self.challenge("authentication required: log in with 'docker login'")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise self.challenge(f"unsupported authorization scheme {scheme[:32]!r}: use Basic")
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise self.challenge("malformed basic credentials") from None
        user_b, sep, password = decoded.partition(b":")
        user = user_b.decode("utf-8", "replace")
        if not sep:
            raise self.challenge("malformed basic credentials")
        key = hmac.new(self._key, decoded, hashlib.sha256).digest()
        expires = self._ok.get(key)
        if expires is not None:
            if expires > now:
                self._ok.move_to_end(key)
                return user
            del self._ok[key]
        if not await self._check(key, password, self.users.get(user)):
            raise self.challenge("invalid username or password")
        return user

    async def _check(self, key: bytes, password: bytes, hashed: bytes | None) -> bool:
        """bcrypt on the pool; requests with the same credentials share one run."""
        pending = self._pending.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            if hashed is None:
                pending = loop.run_in_executor(_bcrypt_pool, _refuse, password, self.table.dummy)
            else:
                pending = loop.run_in_executor(_bcrypt_pool, _verify, password, hashed)
            self._pending[key] = pending
            generation = self._generation
            pending.add_done_callback(lambda done: self._settle(key, done, generation))
        # Shielded: a client that hangs up does not cancel the check others wait for.
        return await asyncio.shield(pending)

    def _settle(self, key: bytes, done: asyncio.Future[bool], generation: int) -> None:
        """A check finished: it is no longer pending and, if it succeeded against the
        users still in use, it is remembered (before any waiter resumes, so a request
        arriving meanwhile finds one or the other)."""
        if self._pending.get(key) is done:
            del self._pending[key]
        if done.cancelled() or done.exception() is not None or not done.result():
            return
        if generation == self._generation:
            self._ok[key] = time.monotonic() + CACHE_SECONDS
            while len(self._ok) > CACHE_ENTRIES:
                self._ok.popitem(last=False)


def _verify(password: bytes, hashed: bytes) -> bool:
    # bcrypt reads "$2y$" (Apache's htpasswd -B) as the same algorithm as "$2b$".
    if hashed.startswith(b"$2y$"):
        hashed = b"$2b$" + hashed[4:]
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. a password longer than bcrypt's 72 bytes
        return False


def _refuse(password: bytes, dummy: bytes) -> bool:
    """An unknown user: spend what a real check costs, then refuse."""
    _verify(password, dummy)
    return False
