"""Which pack backend a store directory uses: :func:`open_packs`.

Packs live on disk (``<storage>/packs``) unless the store was opened with an S3 location,
which the directory then records (``<storage>/packs.json``, :mod:`cas.s3_location`), and
so does shared (PostgreSQL) metadata: every later open of that directory, or of any
directory on that metadata, by any command, uses the recorded place, and a store is
never opened on packs that are not its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import CasError
from .pack_files import FilesystemPacks
from .s3_location import S3Location, S3LocationError

if TYPE_CHECKING:
    from .meta import Metadata
    from .packs import PackBackend

__all__ = ["PACKS_SETTING", "PacksElsewhere", "SharedSettings", "check_packs_here", "move_packs",
           "open_packs", "packs_are_shared"]


class PacksElsewhere(CasError):
    """Shared metadata whose packs are on disk was opened on a storage directory that
    holds none of them: most likely another directory than the one the store uses."""


@runtime_checkable
class SharedSettings(Protocol):
    """Metadata shared by every replica that also records where the packs live
    (PostgreSQL's, :class:`cas.pg_meta.PgMetadata`)."""

    def setting(self, name: str) -> str | None: ...
    def set_setting_once(self, name: str, value: str, *, replace: bool = False) -> str: ...
    def pack_live(self) -> dict[str, int]: ...


#: The shared setting that names the packs' S3 location (its URL without the keys).
PACKS_SETTING = "packs"


def open_packs(root: Path, *, direct_io: bool = True, s3: S3Location | None = None,
               known: Callable[[str], bool] | None = None,
               settings: SharedSettings | None = None) -> PackBackend:
    """The pack backend of store directory ``root``: S3 when ``s3`` is given or recorded
    (in the directory, or in the shared metadata ``settings``), else files.
    S3LocationError when ``s3`` names another place than a recorded one, when the
    directory already holds packs on disk, or when the prefix holds packs the store's
    metadata does not know (``known``: its ``is_pack_known``); S3StorageError when the
    bucket is missing or refuses the keys.

    Shared metadata records the location (without its keys) the first time a store on
    it is opened with one, so a replica or a CLI run on an empty storage directory finds
    the packs (keys from its config, or ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``)."""
    recorded = S3Location.recorded(root)
    shared = None
    if settings is not None:
        url = settings.setting(PACKS_SETTING)
        shared = None if url is None else S3Location.parse(url)
    for other, where in ((recorded, f"store {root}"), (shared, "the store's metadata")):
        for mine in (s3, recorded):
            if other is not None and mine is not None and not other.same_place(mine):
                moved = ("; if they were copied there (a restore into another bucket), "
                         "record it: `pybuild storage init --database URL --packs "
                         "s3://... --moved`") if other is shared else ""
                raise S3LocationError(
                    f"{where} keeps its packs in {other}, not {mine}; use that location, "
                    f"or another storage directory (and database) for a new store{moved}")
    if s3 is None and recorded is None and shared is None:
        return FilesystemPacks(root / "packs", direct=direct_io)
    if recorded is None and any((root / "packs").glob("*/*.pack")):
        raise S3LocationError(
            f"store {root} keeps its packs on disk ({root / 'packs'}); an S3 store needs a "
            "storage directory of its own")
    if s3 is None:
        if recorded is not None:
            return _s3_packs(recorded)
        assert shared is not None
        return _s3_packs(shared)
    packs = _s3_packs(s3)  # checks the bucket and the keys before recording them
    if recorded is None and shared is None and _foreign(packs.names(), known):
        # GC removes every pack its own metadata does not know: two stores on one
        # prefix would delete each other's pieces. (Replicas of one store share their
        # metadata, which knows the packs: they may share the prefix.)
        raise S3LocationError(
            f"{s3} already holds the packs of another store; give this store a prefix "
            "of its own (s3://HOST/BUCKET/PREFIX)")
    if settings is not None and shared is None:
        first = S3Location.parse(settings.set_setting_once(PACKS_SETTING, s3.to_url(keys=False)))
        if not first.same_place(s3):  # another replica recorded another place meanwhile
            raise S3LocationError(f"the store's metadata keeps its packs in {first}, not {s3}")
    if recorded != s3:
        s3.record(root)
    return packs


def move_packs(settings: SharedSettings, s3: S3Location) -> S3Location | None:
    """Record ``s3`` in shared metadata ``settings`` as where its packs live, in place of
    the location recorded before (packs copied to another bucket or prefix: a restore from
    a backup, a move); the old location, or None.

    S3LocationError, changing nothing, unless ``s3`` holds every pack the metadata counts
    live bytes in: a location without them would serve every blob as damaged, and GC
    there would delete the packs it does hold as unknown ones."""
    present = set(_s3_packs(s3).names())
    live = sorted(name for name, n in settings.pack_live().items() if n > 0)
    missing = [name for name in live if name not in present]
    if missing:
        raise S3LocationError(
            f"{s3} lacks {len(missing)} of the {len(live)} packs this store's metadata names "
            f"(e.g. {missing[0]}); copy every object of the old location's packs/ there first")
    old = settings.setting(PACKS_SETTING)
    settings.set_setting_once(PACKS_SETTING, s3.to_url(keys=False), replace=True)
    return None if old is None else S3Location.parse(old, {})


def _foreign(names: list[str], known: Callable[[str], bool] | None) -> bool:
    """True when ``names`` holds packs and none of the first few is known."""
    sample = names[:16]
    if not sample:
        return False
    return known is None or not any(known(n) for n in sample)


def _s3_packs(location: S3Location) -> PackBackend:
    try:
        from .pack_s3 import S3Packs
    except ImportError as exc:
        raise S3LocationError(
            # Not 'pybuild[s3]': the pybuild on PyPI is another project.
            f"packs in {location} need the S3 client: pip install 'obstore>=0.12' (pybuild's s3 "
            f"extra: pip install '.[s3]' in its checkout) ({exc})") from exc
    return S3Packs(location)


def packs_are_shared(packs: PackBackend) -> bool:
    """True when ``packs`` live in object storage that other machines reach (S3), not in
    a directory of this one."""
    module = sys.modules.get("cas.pack_s3")  # loaded by whoever made S3 packs
    return module is not None and isinstance(packs, module.S3Packs)


def check_packs_here(meta: Metadata, packs: PackBackend) -> None:
    """Refuse (:class:`PacksElsewhere`) shared metadata with packs on disk when none of
    the packs it counts live bytes in is in ``packs``' directory.

    Shared (PostgreSQL) metadata does not live in the storage directory, so a command
    given another ``--storage`` than the store's finds its metadata but none of its
    packs: fsck would call every piece damaged, and GC would free space in packs it
    cannot see and delete that directory's own pack files as unknown ones. Some packs
    missing is damage, for fsck to report; all of them, a wrong directory."""
    if not isinstance(meta, SharedSettings) or not isinstance(packs, FilesystemPacks):
        return  # SQLite metadata lives with its packs; S3 packs are found through the metadata
    live = [name for name, n in meta.pack_live().items() if n > 0]
    if not live:
        return
    present = set(packs.names())
    if any(name in present for name in live):
        return
    raise PacksElsewhere(
        f"none of the {len(live)} pack(s) this store's metadata database names is in "
        f"{packs.root}: its packs are most likely in another storage directory; run again "
        "with --storage set to the directory the registry uses with this database (its "
        "--storage or storage.filesystem.rootdirectory), or restore the packs there")
