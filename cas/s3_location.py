"""Where a store's packs live when they live in S3-compatible object storage: :class:`S3Location`.

Written as a URL (``--packs``, ``pybuild storage init``, the ``packs`` config key)::

    s3://[ACCESS_KEY:SECRET_KEY@]HOST[:PORT]/BUCKET[/PREFIX][?region=R&secure=false]

``secure`` (default true) chooses https; ``region`` defaults to ``us-east-1``. Keys missing
from the URL come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``.

A store directory records where its packs live in ``<storage>/packs.json`` (mode 0600: it
holds the keys) the first time it is opened with a location, so every later command on
that directory (``storage gc``, ``fsck``, ``serve``) reaches the same packs without being
told again, and a store is never opened on the wrong packs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .errors import CasError, StorageError

__all__ = ["RECORD", "ObjectStorageUnavailable", "S3Location", "S3LocationError"]

#: The file in a store directory that says where its packs live.
RECORD = "packs.json"


class S3LocationError(CasError, ValueError):
    """An S3 location that cannot be used; the message names what is wrong and the fix."""


class ObjectStorageUnavailable(StorageError):
    """The object storage cannot be reached (connections refused or timed out): the same
    request may succeed later, as with an unreachable metadata database. Here, not beside
    the S3 client, so that callers map it without loading that client."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """An S3-compatible bucket (and a key prefix in it) that holds a store's packs.

    ``endpoint`` is ``host[:port]``; ``secure`` picks https over http. ``prefix`` is ""
    or ends with "/". ``part_size`` is the multipart upload part size (and the most a pack
    writer holds in memory before it starts one).
    """

    endpoint: str
    bucket: str
    prefix: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    region: str = "us-east-1"
    secure: bool = True
    part_size: int = 8 << 20

    def __post_init__(self) -> None:
        if not self.endpoint:
            raise S3LocationError("S3 location has no endpoint (host[:port])")
        if not (3 <= len(self.bucket) <= 63) or "/" in self.bucket:
            raise S3LocationError(f"S3 bucket name {self.bucket!r} is not valid: 3-63 characters, no '/'")
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if self.part_size < 5 << 20:
            raise S3LocationError(f"S3 part size {self.part_size} is below S3's minimum of 5 MiB")

    @property
    def url(self) -> str:
        """The endpoint as a URL (http:// or https://)."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def __str__(self) -> str:
        """The location without its keys (for messages and logs)."""
        return f"s3://{self.endpoint}/{self.bucket}/{self.prefix}"

    @classmethod
    def parse(cls, text: str, env: dict[str, str] | None = None) -> S3Location:
        """Parse ``s3://[KEY:SECRET@]HOST[:PORT]/BUCKET[/PREFIX][?region=..&secure=..&part_size=..]``."""
        env = dict(os.environ) if env is None else env
        u = urlsplit(text)
        shown = text if u.password is None else text.replace(f":{u.password}@", ":***@", 1)
        if u.scheme != "s3" or not u.hostname:
            raise S3LocationError(
                f"not an S3 location: {shown!r}; write s3://HOST[:PORT]/BUCKET[/PREFIX]")
        endpoint = u.hostname + (f":{u.port}" if u.port else "")
        bucket, _, prefix = u.path.lstrip("/").partition("/")
        query = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = set(query) - {"region", "secure", "part_size"}
        if unknown:
            raise S3LocationError(f"S3 location {shown!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                                  "known: region, secure, part_size")
        secure = query.get("secure", "true").lower()
        if secure not in ("true", "false", "1", "0"):
            raise S3LocationError(f"S3 location: secure={secure!r} is not true or false")
        access = unquote(u.username or "") or env.get("AWS_ACCESS_KEY_ID", "")
        secret = unquote(u.password or "") or env.get("AWS_SECRET_ACCESS_KEY", "")
        try:
            part_size = int(query.get("part_size", 8 << 20))
        except ValueError as exc:
            raise S3LocationError(f"S3 location: part_size={query['part_size']!r} is not a number") from exc
        return cls(endpoint, bucket, prefix, access, secret,
                   query.get("region", "us-east-1"), secure in ("true", "1"), part_size)

    def to_url(self, keys: bool = False) -> str:
        """The URL :meth:`parse` reads back (with the keys only when ``keys``)."""
        cred = f"{quote(self.access_key, safe='')}:{quote(self.secret_key, safe='')}@" if keys else ""
        return (f"s3://{cred}{self.endpoint}/{self.bucket}/{self.prefix}"
                f"?region={self.region}&secure={str(self.secure).lower()}&part_size={self.part_size}")

    def same_place(self, other: S3Location) -> bool:
        """True when both name the same bucket and prefix on the same endpoint."""
        return (self.endpoint, self.bucket, self.prefix) == (other.endpoint, other.bucket, other.prefix)

    # -- the record in a store directory ----------------------------------------------

    @classmethod
    def recorded(cls, root: Path) -> S3Location | None:
        """The location recorded in store directory ``root``, or None (packs on disk)."""
        try:
            data = json.loads((root / RECORD).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:  # its content (the file system's trouble is an OSError)
            raise S3LocationError(f"{root / RECORD} cannot be read: {exc}; fix or remove it") from exc
        if data.get("kind") != "s3":
            raise S3LocationError(f"{root / RECORD}: unknown pack storage kind {data.get('kind')!r}")
        fields = {k: v for k, v in data.items() if k != "kind"}
        try:
            loc = cls(**fields)
        except TypeError as exc:
            raise S3LocationError(f"{root / RECORD}: {exc}; fix or remove it") from exc
        if not loc.access_key:  # recorded without keys: take them from the environment
            loc = replace(loc, access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
                          secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        return loc

    def record(self, root: Path) -> None:
        """Write this location to ``root/packs.json`` (mode 0600), atomically."""
        tmp = root / f".{RECORD}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"kind": "s3", **asdict(self)}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / RECORD)
