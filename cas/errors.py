"""Errors raised by the content-addressed store.

::

    CasError
    ├── InvalidDigest                 text that is not ``algorithm:encoded``
    ├── UnsupportedDigestAlgorithm    a well-formed digest of an algorithm we cannot verify
    ├── DigestMismatch                content does not hash to the digest it claimed
    ├── SizeMismatch                  content is not as long as it claimed
    ├── BlobUnknown                   no committed blob with that digest
    ├── IngestUnknown                 no open ingest with that id (expired, committed or aborted)
    ├── IngestOffsetMismatch          a resumed write does not start where the ingest stands
    ├── InvalidRange                  a byte range outside the blob
    ├── StorageError                  the store's directory cannot take a write (also OSError)
    │   ├── StorageFull               no space left (ENOSPC, EDQUOT, SQLite "disk is full")
    │   ├── StorageNotWritable        read-only file system or no permission (EROFS, EACCES, EPERM)
    │   │   └── StorageNotOwned       the storage belongs to another user than the one running
    │   └── StorageUnsupported        a file system without symlinks, hard links or modes (vfat)
    ├── StoreClosed                   a store (or its metadata, a pack writer...) used after close()
    └── StoreCorrupt                  bytes on disk do not match their recorded key

Every message names the problem and, where there is one, the fix. Errors from lower
layers (``OSError``, ``sqlite3.Error``) are mapped by :func:`storage_error` and re-raised
``from`` the cause; a ``StorageError`` names the path, the cause and what to do (free
space, or point ``--storage`` / ``PYBUILD_STORAGE`` elsewhere).
"""

from __future__ import annotations

import errno
import os
import resource  # here, not on first use: loading it then needs a free descriptor
import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "BlobUnknown",
    "CasError",
    "DigestMismatch",
    "IngestOffsetMismatch",
    "IngestUnknown",
    "InvalidDigest",
    "InvalidRange",
    "SchemaTooNew",
    "SizeMismatch",
    "StorageError",
    "StorageFull",
    "StorageNotOwned",
    "StorageNotWritable",
    "StorageUnsupported",
    "StoreClosed",
    "StoreCorrupt",
    "UnsupportedDigestAlgorithm",
    "full_cause",
    "mapped_error",
    "missing_features",
    "out_of_descriptors",
    "storage_error",
]


class CasError(Exception):
    """Base of every error the store raises."""


class InvalidDigest(CasError, ValueError):
    def __init__(self, text: object, why: str) -> None:
        super().__init__(f"invalid digest {text!r}: {why}")
        self.text = text


class UnsupportedDigestAlgorithm(CasError, ValueError):
    def __init__(self, algorithm: str) -> None:
        super().__init__(
            f"unsupported digest algorithm {algorithm!r}: use sha256, sha512 or blake3"
        )
        self.algorithm = algorithm


class DigestMismatch(CasError):
    def __init__(self, expected: object, actual: object) -> None:
        super().__init__(
            f"digest mismatch: expected {expected}, content hashes to {actual}; "
            "nothing was stored — resend the content or correct the digest"
        )
        self.expected = expected
        self.actual = actual


class SizeMismatch(CasError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"size mismatch: expected {expected} bytes, received {actual}; "
            "the stream was truncated or the size is wrong — nothing was stored"
        )
        self.expected = expected
        self.actual = actual


class BlobUnknown(CasError, KeyError):
    def __init__(self, digest: object) -> None:
        super().__init__(f"blob unknown: {digest} is not in the store")
        self.digest = digest

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class IngestUnknown(CasError, KeyError):
    def __init__(self, ingest_id: str) -> None:
        super().__init__(
            f"ingest unknown: {ingest_id!r} is not open (committed, aborted or expired); "
            "start a new one"
        )
        self.ingest_id = ingest_id

    def __str__(self) -> str:
        return str(self.args[0])


class IngestOffsetMismatch(CasError):
    def __init__(self, ingest_id: str, expected: int, got: int) -> None:
        super().__init__(
            f"ingest {ingest_id} stands at byte {expected}, but the write starts at {got}; "
            f"resume from byte {expected}"
        )
        self.ingest_id = ingest_id
        self.expected = expected
        self.got = got


class InvalidRange(CasError, ValueError):
    def __init__(self, offset: int, length: int | None, size: int) -> None:
        super().__init__(
            f"invalid range: offset {offset}, length {length} outside a blob of {size} bytes"
        )
        self.offset = offset
        self.length = length
        self.size = size


_MOVE = "or use another storage directory (--storage DIR or PYBUILD_STORAGE)"


class StorageError(CasError, OSError):
    """The store's directory cannot take a write. ``path`` is where, ``cause`` the
    operating system's (or SQLite's) words for why; the message says what to do."""

    def __init__(self, message: str, path: Path | str | None = None, cause: str = "") -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.cause = cause

    def __str__(self) -> str:
        return str(self.args[0])


class StorageFull(StorageError):
    def __init__(self, where: str, path: Path | str | None = None, cause: str = "") -> None:
        at = f" ({path})" if path is not None else ""
        self.where = where
        super().__init__(
            f"storage full while writing {where}{at}: {cause or 'no space left on device'}; "
            f"free space there, {_MOVE}; nothing partial was committed",
            path, cause or "no space left on device",
        )


class StorageNotWritable(StorageError):
    def __init__(self, path: Path | str, cause: str) -> None:
        fix = ("remount it read-write" if "read-only" in cause
               else "give this user write access to it")
        super().__init__(f"storage not writable: {path}: {cause}; {fix}, {_MOVE}", path, cause)


class StorageNotOwned(StorageNotWritable):
    """The storage directory ``store`` (or ``path`` in it) belongs to ``owner`` (None:
    a user this user namespace does not map), not to ``user`` who runs pybuild:
    ``user`` cannot write there, or is root, and what root wrote there ``owner`` could
    no longer change or remove."""

    def __init__(self, store: Path | str, path: Path | str, owner: str | None,
                 user: str | None) -> None:
        user = user or "this user"
        who = owner or "another user"
        why = (f"and files root made there {who} could not change" if user == "root"
               else f"and {user} cannot write to it")
        how = "chown" if user == "root" else "sudo chown"
        StorageError.__init__(
            self, f"storage owned by another user: {path} belongs to {who}, {why}; "
            f"run pybuild as {owner or 'its owner'}, or hand the storage to {user} "
            f"({how} -R {user} {store}), {_MOVE}", path, "owned by another user")
        self.owner = owner
        self.user = user


class SchemaTooNew(StorageError):
    """A database of the store was written by a later pybuild: its schema version
    (``PRAGMA user_version``) ``stored`` is past ``known``, the latest this code knows."""

    def __init__(self, path: Path | str, stored: int, known: int) -> None:
        super().__init__(
            f"{path} was written by a newer pybuild (schema version {stored}; this pybuild "
            f"knows versions up to {known}) and is left as it is: upgrade pybuild to use "
            f"it, {_MOVE}", path, f"schema version {stored}")
        self.stored = stored
        self.known = known


class StorageUnsupported(StorageError):
    """The file system of the storage directory ``path`` cannot keep what image files
    are made of: ``missing`` names what it lacks (symbolic links, hard links, Unix
    permissions), as vfat, exFAT and some network shares do."""

    def __init__(self, path: Path | str, missing: str,
                 why: str = "image files need them (vfat, exFAT and Windows shares have "
                            "none)") -> None:
        super().__init__(
            f"storage on a file system without {missing}: {path}; {why}, so put the "
            f"storage on a local Linux file system (ext4, xfs, btrfs, tmpfs), {_MOVE}",
            path, f"no {missing}")
        self.missing = missing


def missing_features(directory: Path | str) -> str | None:
    """What of symbolic links, hard links and Unix permissions the file system of
    ``directory`` (an existing, writable directory) refuses, in words ("symbolic links,
    hard links or Unix permissions"); None when it keeps all three. Probes in a scratch directory it
    removes again (blocking)."""
    import shutil  # only here: every command imports this module, few probe
    import tempfile

    missing = []
    probe = tempfile.mkdtemp(prefix=".probe-", dir=directory)
    try:
        name = os.path.join(probe, "f")
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600))
        probes: list[tuple[str, Callable[[], None]]] = [
            ("symbolic links", lambda: os.symlink("f", name + "s")),
            ("hard links", lambda: os.link(name, name + "h")),
            ("Unix permissions", lambda: os.chmod(name, 0o640))]
        for what, make in probes:
            try:
                make()
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                missing.append(what)
        # vfat mounted with "quiet" takes a chmod and keeps its own mode all the same
        if "Unix permissions" not in missing and os.stat(name).st_mode & 0o777 != 0o640:
            missing.append("Unix permissions")
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if not missing:
        return None
    return missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} or {missing[-1]}"


class StoreClosed(CasError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is closed: it was used after close(); open it again")
        self.what = what


_FULL = (errno.ENOSPC, errno.EDQUOT)
# SQLite's WAL index is a shared memory map of a file beside the database: some network
# and FUSE file systems cannot make one.
_NO_SHARED_MEMORY = (sqlite3.SQLITE_IOERR_SHMOPEN, sqlite3.SQLITE_IOERR_SHMSIZE,
                     sqlite3.SQLITE_IOERR_SHMMAP)
_WAL_NEEDS = ("SQLite's write-ahead log needs them (network and some FUSE file systems "
              "have none)")
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(exc: BaseException, path: Path | str) -> StorageError | None:
    """The typed error for ``exc`` (an ``OSError`` or ``sqlite3.Error`` met while using
    the store file or directory ``path``), or None when it is not a storage problem.

    SQLite reports a read-only or full file system only vaguely ("unable to open
    database file", "attempt to write a readonly database", "disk I/O error"): the
    directory is then probed for the cause."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and not isinstance(exc, CasError):
        where = exc.filename if exc.filename is not None else path
        if exc.errno in _FULL:
            return StorageFull(str(where), None, full_cause(where, exc.errno))
        if exc.errno in _NOT_WRITABLE:
            return StorageNotWritable(where, os.strerror(exc.errno).lower())
        return None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code in _NO_SHARED_MEMORY:  # also met on a full disk: that is said first
            return _probe(Path(path)) or StorageUnsupported(path, "shared memory maps",
                                                            _WAL_NEEDS)
        if code is not None:
            code &= 0xFF  # the primary code of an extended one (SQLITE_IOERR_SHMSIZE...)
        if code == sqlite3.SQLITE_FULL:
            return StorageFull(str(path), None, full_cause(path))
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR,
                    sqlite3.SQLITE_PERM) or (code is None and "readonly" in str(exc)):
            return _probe(Path(path))
    return None


def full_cause(path: Path | str | bytes, code: int = errno.ENOSPC) -> str:
    """The words for ``code`` (ENOSPC or EDQUOT) met writing at ``path``: a file system
    out of inodes (or next to it) says so, since ``df`` shows it with room to spare."""
    if code == errno.EDQUOT:
        return os.strerror(code).lower()
    start = Path(os.fsdecode(path))
    d = next((d for d in (start, *start.parents) if d.is_dir()), start)
    try:
        fs = os.statvfs(d)
    except OSError:
        fs = None
    if fs is not None and fs.f_files and _inodes_ran_out(fs):
        return "no space left on device (no free inodes: too many files there, see df -i)"
    return "no space left on device"


def _inodes_ran_out(fs: os.statvfs_result) -> bool:
    """Whether a failed write on ``fs`` ran out of inodes rather than bytes. Next to none
    free is enough (a step's helpers, the sandbox probe, may free a few between the
    failed write and this look); under 0.1% free only while bytes are left (a disk with
    millions of inodes that filled up with data has that few free and still ran out of
    bytes). root writes into the blocks reserved for it: its free bytes are ``f_bfree``."""
    if fs.f_favail < 16:
        return True
    free_bytes = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
    return fs.f_favail < fs.f_files // 1000 and free_bytes >= _BYTES_LEFT


_BYTES_LEFT = 16 << 20  # a write failing with more free than this did not lack bytes


def mapped_error(exc: BaseException, path: Path | str,
                 scope: Path | str | None = None) -> BaseException:
    """``exc`` as the store reports it: a full or unwritable file system at ``path``
    (the store's directory, or its database file) as a typed StorageError, anything else
    unchanged - also an OSError about a file outside ``scope`` (default ``path``; the
    directory of a database file), such as an export's destination."""
    if isinstance(exc, OSError) and exc.filename is not None:
        name = os.path.abspath(os.fsdecode(exc.filename))
        root = os.path.abspath(path if scope is None else scope)
        if name != root and not name.startswith(root.rstrip("/") + "/"):
            return exc
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == \
            sqlite3.SQLITE_CANTOPEN and out_of_descriptors():
        # SQLite's words for it: "unable to open database file".
        return OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))
    if isinstance(exc, (OSError, sqlite3.Error)):
        return storage_error(exc, path) or exc
    return exc


def out_of_descriptors() -> bool:
    """Whether this process holds (nearly) as many files open as it may (``ulimit -n``)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        return len(os.listdir("/proc/self/fd")) >= soft - 2
    except OSError as exc:  # listing them needs one more
        return exc.errno == errno.EMFILE


def _probe(path: Path) -> StorageError | None:
    """Why nothing can be written at ``path`` (a file or directory), if the file
    system says so."""
    for d in (path, *path.parents):
        if d.is_dir():
            break
    else:
        return None
    try:
        fs = os.statvfs(d)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return StorageNotWritable(path, "read-only file system")
    if not os.access(d, os.W_OK):
        return StorageNotWritable(path, "permission denied")
    # (a FUSE file system may report no size at all: 0 blocks, 0 free; not full)
    if (fs.f_blocks and fs.f_bavail * fs.f_frsize < (256 << 10)) or (fs.f_files and not fs.f_favail):
        return StorageFull(str(path), None, full_cause(d))
    return None


class StoreCorrupt(CasError):
    def __init__(self, what: str) -> None:
        super().__init__(f"store corrupt: {what}; run 'pybuild storage fsck' for a full report")
        self.what = what
