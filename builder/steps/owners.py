"""Who owns what COPY, ADD and WORKDIR write: ``--chown`` and the stage's USER as ids,
read from the stage's /etc/passwd and /etc/group as BuildKit reads them."""

from __future__ import annotations

from pathlib import Path

from ..accounts import find_group, find_user, read_group, read_passwd
from ..sandbox.rootfs import read_from_lowers
from ..sandbox.userns import unmapped_owner
from .common import BuildError

__all__ = ["check_mapped", "chown_ids", "workdir_owner"]


def chown_ids(spec: str, lowers: list[Path], where: str) -> tuple[int, int]:
    """``--chown=user[:group]`` as ids: a number is used as is, a name is looked up in
    the stage's /etc/passwd or /etc/group (BuildError when it is not there); without a
    group, a named user's primary group, else the uid. As BuildKit, ``root`` is 0
    without a lookup and an empty part is 0 (``:staff``, ``tester:``)."""
    user, colon, group = spec.partition(":")
    found = None
    if user in ("", "root"):
        user = "0"
    if colon and group in ("", "root"):
        group = "0"
    if not user.isdigit():
        found = find_user(read_passwd(read_from_lowers(lowers, "etc/passwd")), user)
        if found is None:
            raise BuildError(where, f"--chown: no user {user!r} in the image's /etc/passwd")
    uid = int(user) if found is None else found.uid
    if group:
        if group.isdigit():
            return uid, int(group)
        entry = find_group(read_group(read_from_lowers(lowers, "etc/group")), group)
        if entry is None:
            raise BuildError(where, f"--chown: no group {group!r} in the image's /etc/group")
        return uid, entry.gid
    if found is None or found.gid is None:
        return uid, uid
    return uid, found.gid


def check_mapped(owner: tuple[int, int] | None, where: str, what: str) -> None:
    """A non-root build can give files only the ids its user namespace maps."""
    if owner is not None and (problem := unmapped_owner(*owner)) is not None:
        raise BuildError(where, f"{what}: {problem}")


def workdir_owner(spec: str, lowers: list[Path]) -> tuple[int, int]:
    """The owner BuildKit gives directories WORKDIR creates under ``USER spec``: names
    looked up as for ``--chown``, but leniently (a user /etc/passwd lacks is root, a
    group /etc/group lacks leaves the user's group), since USER need not exist."""
    user, _, group = spec.partition(":")
    try:
        uid, gid = chown_ids(user, lowers, "WORKDIR")
    except BuildError:
        uid, gid = 0, 0
    if group:
        try:
            gid = chown_ids(f"0:{group}", lowers, "WORKDIR")[1]
        except BuildError:
            pass
    return uid, gid
