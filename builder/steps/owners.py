"""Who owns what COPY, ADD and WORKDIR write: ``--chown`` and the stage's USER as ids,
read from the stage's /etc/passwd and /etc/group as BuildKit reads them."""

from __future__ import annotations

from pathlib import Path

from ..accounts import MAX_ENTRY_ID, find_group, find_user, read_group, read_passwd
from ..sandbox.rootfs import read_from_lowers
from ..sandbox.userns import unmapped_owner
from .common import BuildError

__all__ = ["check_mapped", "chown_ids", "workdir_owner"]


def chown_ids(spec: str, lowers: list[Path]) -> tuple[int, int]:
    """``--chown=user[:group]`` as ids, as BuildKit's file op reads them: a number is used
    as is (and is the group too when none is given), a name is looked up in the stage's
    /etc/passwd (giving its primary group) or /etc/group. A name that is not there is not
    an error: an unknown user is 0:0 and an unknown group leaves the user's, so a
    Dockerfile that builds with docker builds here (``COPY --chown=app`` before the RUN
    that adds ``app`` gives root's files there too). ``root`` is 0 without a lookup and
    an empty part is 0 (``:staff``, ``tester:``). ValueError for a number that is no
    Linux id (BuildKit makes such a file root's, silently)."""
    user, colon, group = spec.partition(":")
    if user in ("", "root"):
        user = "0"
    if colon and group in ("", "root"):
        group = "0"
    if user.isascii() and user.isdigit():
        uid = gid = int(user)
    else:
        found = find_user(read_passwd(read_from_lowers(lowers, "etc/passwd")), user)
        uid, gid = (found.uid, found.gid if found.gid is not None else found.uid) \
            if found is not None else (0, 0)
    if group.isascii() and group.isdigit():
        gid = int(group)
    elif group:
        entry = find_group(read_group(read_from_lowers(lowers, "etc/group")), group)
        if entry is not None:
            gid = entry.gid
    for kind, value in (("uid", uid), ("gid", gid)):
        if value > MAX_ENTRY_ID:
            raise ValueError(f"{kind} {value} is out of range: ids run from 0 to "
                             f"{MAX_ENTRY_ID} (give one of those, or a name)")
    return uid, gid


def check_mapped(owner: tuple[int, int] | None, where: str, what: str) -> None:
    """A non-root build can give files only the ids its user namespace maps."""
    if owner is not None and (problem := unmapped_owner(*owner)) is not None:
        raise BuildError(where, f"{what}: {problem}")


def workdir_owner(spec: str, lowers: list[Path]) -> tuple[int, int]:
    """The owner BuildKit gives directories WORKDIR creates under ``USER spec``: the ids
    ``--chown=spec`` would give (a user /etc/passwd lacks is root, a group /etc/group
    lacks leaves the user's group), since USER need not exist; root's for a number that is
    no Linux id (as BuildKit: no step can run as it anyway)."""
    try:
        return chown_ids(spec, lowers)
    except ValueError:
        return 0, 0
