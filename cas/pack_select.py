"""Which pack backend a store directory uses: :func:`open_packs`.

Packs live on disk (``<storage>/packs``) unless the store was opened with an S3 location,
which the directory then records (``<storage>/packs.json``, :mod:`cas.s3_location`): every
later open of that directory, by any command, uses the recorded place, and a store is
never opened on packs that are not its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .pack_files import FilesystemPacks
from .s3_location import S3Location, S3LocationError

if TYPE_CHECKING:
    from .packs import PackBackend

__all__ = ["open_packs"]


def open_packs(root: Path, *, direct_io: bool = True, s3: S3Location | None = None,
               known: Callable[[str], bool] | None = None) -> PackBackend:
    """The pack backend of store directory ``root``: S3 when ``s3`` is given or recorded,
    else files. S3LocationError when ``s3`` names another place than the recorded one,
    when the directory already holds packs on disk, or when the prefix holds packs the
    store's metadata does not know (``known``: its ``is_pack_known``); S3StorageError when the bucket is missing
    or refuses the keys."""
    recorded = S3Location.recorded(root)
    if s3 is None:
        if recorded is not None:
            return _s3_packs(recorded)
        return FilesystemPacks(root / "packs", direct=direct_io)
    if recorded is not None and not recorded.same_place(s3):
        raise S3LocationError(
            f"store {root} keeps its packs in {recorded}, not {s3}; use that location, "
            "or another storage directory for a new store")
    if recorded is None and any((root / "packs").glob("*/*.pack")):
        raise S3LocationError(
            f"store {root} keeps its packs on disk ({root / 'packs'}); an S3 store needs a "
            "storage directory of its own")
    packs = _s3_packs(s3)  # checks the bucket and the keys before recording them
    if recorded is None and _foreign(packs.names(), known):
        # GC removes every pack its own metadata does not know: two stores on one
        # prefix would delete each other's pieces. (Replicas of one store share their
        # metadata, which knows the packs: they may share the prefix.)
        raise S3LocationError(
            f"{s3} already holds the packs of another store; give this store a prefix "
            "of its own (s3://HOST/BUCKET/PREFIX)")
    if recorded != s3:
        s3.record(root)
    return packs


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
            f"packs in {location} need the S3 client: pip install 'pybuild[s3]' ({exc})") from exc
    return S3Packs(location)
