"""Where the store lives and what it is made of: :class:`StoreConfig`.

When nobody says where: ``PYBUILD_STORAGE``, else the XDG data dir
(:func:`default_storage_dir`). Every command opens its store from a config with
:func:`cas.open.open_store`.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .chunker import ChunkParams
    from .meta import Metadata
    from .packs import PackBackend
    from .s3_location import S3Location

from .errors import CasError, StorageNotOwned, StorageNotWritable

__all__ = ["StorageLocationError", "StoreConfig", "check_owner", "check_place",
           "default_storage_dir"]


class StorageLocationError(CasError, ValueError):
    """The default place of a directory (the store, Docker's config.json) cannot exist:
    an environment variable it comes from names a file; the message says which and what
    to do."""


def default_storage_dir(*, check: bool = True) -> Path:
    """``$PYBUILD_STORAGE``, else ``$XDG_DATA_HOME/pybuild``, else ``~/.local/share/pybuild``.

    ``check``: :class:`StorageLocationError` when the variable the path comes from names
    a file (a ``HOME`` that is a regular file, as a service's may be), or a file is on the
    way to the path: the store could never be made there, and the raw error ("Not a
    directory") names neither the variable nor the fix."""
    env = os.environ.get("PYBUILD_STORAGE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    top, var = (Path(xdg), "XDG_DATA_HOME") if xdg else (Path.home(), "HOME")
    path = (top if xdg else top / ".local" / "share") / "pybuild"
    if check:
        check_place(path, top, var, "the default storage directory",
                    "or name the storage directory: --storage DIR or PYBUILD_STORAGE=DIR")
    return path


def check_place(path: Path, top: Path, var: str, what: str, fix: str) -> None:
    """StorageLocationError when ``top`` (the value of the environment variable ``var``)
    or a directory between it and ``path`` exists and is no directory; ``what`` names
    ``path`` in the message, ``fix`` is its last advice."""
    parts = Path(os.path.relpath(path, top)).parts
    for here in [top, *(top.joinpath(*parts[:n + 1]) for n in range(len(parts)))]:
        try:
            if os.path.isdir(here) or not os.path.lexists(here):
                continue
        except (OSError, ValueError):
            return
        if here == top:
            raise StorageLocationError(
                f"{var}={top} is not a directory, so {what} {path} cannot be there; set "
                f"{var} to a directory (or unset it), {fix}")
        raise StorageLocationError(
            f"{here} is not a directory, so {what} {path} cannot be there ({var}={top}); "
            f"move that file out of the way, {fix}")


# What a store keeps at its top: checked before a command writes anything.
_TOP = ("meta.db", "images.db", "packs", "ingests", "states", "builder")


def check_owner(root: Path) -> None:
    """Refuse a storage directory that belongs to another user (StorageNotOwned) before
    anything is written there: as root, one that another user owns (the files root would
    make there would lock that user out of the store); as anyone else (also root in a
    user namespace: a non-root build), one whose directory or top-level files are
    another user's and not writable by this one (StorageNotWritable when they are this
    user's). A missing directory or a read-only file system is left for the write to
    report."""
    uid = os.geteuid()
    try:
        st = root.stat()
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return
    except OSError:
        return
    if uid == 0 and _uid_map() == [(0, 0, (1 << 32) - 1)]:
        if st.st_uid != 0:
            raise StorageNotOwned(root, root, _user(st.st_uid), _user(0))
        return
    for path in (root, *(root / name for name in _TOP)):
        try:
            owner = path.stat().st_uid
        except OSError:
            continue
        if not os.access(path, os.W_OK):
            if owner != uid:
                raise StorageNotOwned(root, path, _user(owner), _user(uid))
            # Said before a non-root build enters its user namespace, where it is root
            # and would write there all the same (every other command fails there).
            raise StorageNotWritable(path, "permission denied")


def _uid_map() -> list[tuple[int, int, int]]:
    """This process's uid map (inside, outside, count); the initial namespace's when
    there is none to read."""
    try:
        text = Path("/proc/self/uid_map").read_text()
    except OSError:
        return [(0, 0, (1 << 32) - 1)]
    return [(int(f[0]), int(f[1]), int(f[2])) for f in map(str.split, text.splitlines())
            if len(f) == 3]


def _overflow_uid() -> int:
    try:
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534


def _user(uid: int) -> str | None:
    """The name of ``uid`` (of this user namespace) outside any user namespace; None
    when the namespace does not map it (a file's owner then reads as the overflow uid)."""
    ids = _uid_map()
    if ids != [(0, 0, (1 << 32) - 1)] and uid == _overflow_uid():
        return None
    for inside, outside, count in ids:
        if inside <= uid < inside + count:
            try:
                return pwd.getpwuid(outside + uid - inside).pw_name
            except KeyError:
                return f"uid {outside + uid - inside}"
    return None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How to open a store.

    - ``root``: the storage directory (``--storage DIR``); it holds the ingests' tail
      files, and the default backends' files.
    - ``metadata``: makes the metadata backend, given ``root`` (default: SQLite in
      ``root/meta.db``). ``packs``: makes the pack backend, given ``root`` (default:
      files under ``root/packs``, written with O_DIRECT when ``direct_io`` and the file
      system allow). Both are called on a worker thread, once per open; the store owns
      and closes what they return.
    - ``s3``: keep the packs in this S3 bucket (and prefix) instead of on disk; the
      directory records it, and later opens without ``s3`` use the recorded one
      (:mod:`cas.pack_select`).
    - ``workers``: the store's worker threads; ``chunk_params``: how pieces are cut.
    - ``piece_cache_bytes``: when the packs are not local files (S3), the bound of the
      local cache of pieces served (:mod:`cas.piece_cache`, in ``piece_cache_dir``, else
      ``root/cache/pieces``); None: 10 GiB or half the free space, whichever is less;
      0: no cache. ``read_ahead``: ranged reads of such packs one blob read keeps in
      flight (:mod:`cas.remote_read`).
    - ``digest_states``: keep the SHA-256 state of every sha256 blob committed, every
      MiB (:mod:`cas.digest_states`, ``root/states``), so that a blob committed from a
      recipe that begins as one of them hashes only from where they part.
    - ``reading``: the command only reads the store (:meth:`for_reading`): on a read-only
      file system it opens read-only instead of failing (:mod:`cas.read_only`).
    """

    root: Path
    workers: int = 8
    direct_io: bool = True
    metadata: Callable[[Path], Metadata] | None = None
    packs: Callable[[Path], PackBackend] | None = None
    chunk_params: ChunkParams | None = None
    s3: S3Location | None = None
    piece_cache_bytes: int | None = None
    piece_cache_dir: Path | None = None
    read_ahead: int = 8
    digest_states: bool = False
    reading: bool = False

    @classmethod
    def at(cls, storage: Path | str | None, *, workers: int = 8, direct_io: bool = True,
           database: str | None = None, migrate: bool = False) -> StoreConfig:
        """The config of the storage directory ``storage`` (None: the default one).
        ``database``: the metadata lives in that PostgreSQL database (a libpq URI or
        conninfo string) instead of ``meta.db``; ``migrate``: bring its schema up to date
        first instead of refusing an older one."""
        metadata = None if not database else partial(_postgres_metadata, database, migrate)
        return cls(Path(storage) if storage is not None else default_storage_dir(),
                   workers=workers, direct_io=direct_io, metadata=metadata)

    def with_packs_in(self, s3: S3Location | None) -> StoreConfig:
        """This config with its packs in ``s3`` (None: as the directory records)."""
        return replace(self, s3=s3)

    def with_digest_states(self, keep: bool = True) -> StoreConfig:
        """This config keeping (or not) the SHA-256 states of committed blobs."""
        return replace(self, digest_states=keep)

    def for_reading(self, reading: bool = True) -> StoreConfig:
        """This config for a command that only reads the store: where its file system is
        read-only the store opens read-only (its writes raise StorageNotWritable) instead
        of failing to open; anywhere else it opens as always."""
        return replace(self, reading=reading)

    def with_piece_cache(self, max_bytes: int | None, directory: Path | None = None) -> StoreConfig:
        """This config with its piece cache bounded by ``max_bytes`` (None: the default,
        0: none), kept in ``directory`` (None: ``root/cache/pieces``)."""
        return replace(self, piece_cache_bytes=max_bytes, piece_cache_dir=directory)


def _postgres_metadata(database: str, migrate: bool, _root: Path) -> Metadata:
    from .pg_meta import PgMetadata

    return PgMetadata(database, migrate=migrate)
