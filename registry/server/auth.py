"""HTTP basic authentication against an htpasswd file of bcrypt entries.

This is what ``docker login`` speaks to a registry configured like CNCF Distribution's
``auth: htpasswd``: any request without valid credentials gets ``401 UNAUTHORIZED`` with
``WWW-Authenticate: Basic realm="<realm>"``. Access model: an authenticated user may read
and write every repository (the same as Distribution's htpasswd mode).

bcrypt is deliberately slow (~0.1 s per check at cost 10), so checks run in a thread and a
successful (user, password) pair is remembered for :data:`CACHE_SECONDS`, keyed by a
SHA-256 of the credentials (the password itself is never kept).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from ..errors import UNAUTHORIZED, RegistryError

__all__ = ["CACHE_SECONDS", "BasicAuth", "load_htpasswd"]

CACHE_SECONDS = 300.0


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """``user:hash`` lines -> {user: hash}; only bcrypt hashes ($2a$, $2b$, $2y$) are valid.

    Raises ValueError naming the line for anything else, so a misconfigured server fails at
    start rather than refusing every login.
    """
    entries: dict[str, bytes] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{path}:{lineno}: expected 'user:bcrypt-hash'")
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(
                f"{path}:{lineno}: user {user!r} has no bcrypt hash; "
                "create entries with 'htpasswd -B' (bcrypt is the only supported scheme)"
            )
        entries[user] = hashed.encode()
    return entries


@dataclass
class BasicAuth:
    """Checks ``Authorization: Basic`` headers; see the module docstring."""

    users: dict[str, bytes]
    realm: str
    _ok: dict[bytes, float] = field(default_factory=dict)

    def challenge(self, message: str) -> RegistryError:
        return UNAUTHORIZED(
            message, headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'}
        )

    async def authenticate(self, header: str | None) -> str:
        """The user name for a valid header; raises UNAUTHORIZED (401) otherwise."""
        if not header:
            raise self.challenge("authentication required: log in with 'docker login'")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise self.challenge(f"unsupported authorization scheme {scheme!r}: use Basic")
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise self.challenge("malformed basic credentials") from None
        user_b, sep, password = decoded.partition(b":")
        user = user_b.decode("utf-8", "replace")
        if not sep:
            raise self.challenge("malformed basic credentials")
        key = hashlib.sha256(decoded).digest()
        now = time.monotonic()
        if self._ok.get(key, 0.0) > now:
            return user
        hashed = self.users.get(user)
        if hashed is None or not await asyncio.to_thread(_check, password, hashed):
            raise self.challenge("invalid username or password")
        if len(self._ok) > 10_000:
            self._ok.clear()
        self._ok[key] = now + CACHE_SECONDS
        return user


def _check(password: bytes, hashed: bytes) -> bool:
    # bcrypt reads "$2y$" (Apache's htpasswd -B) as the same algorithm as "$2b$".
    if hashed.startswith(b"$2y$"):
        hashed = b"$2b$" + hashed[4:]
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False
