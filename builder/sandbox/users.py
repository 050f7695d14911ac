"""Resolve ``USER`` against the image's /etc/passwd and /etc/group, as Docker does.

Docker (runc's ``user.GetExecUser``) rules, followed here:

- ``""`` is root: uid 0, gid 0.
- ``name`` is looked up by name, a number by uid. Found: uid, primary gid and home come
  from the entry. Not found: a number is used as the uid (gid 0, home ``/``); a name is
  an error.
- ``user:group``: the group is looked up by name or, for a number, by gid; an unknown
  number is used as is, an unknown name is an error. The group replaces the primary gid
  and there are no supplementary groups.
- Without a group, the supplementary groups are every /etc/group entry that lists the
  user's name as a member.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownUser

__all__ = ["ExecUser", "resolve_user"]

_MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"
    name: str = ""


def _entries(text: str | None, fields: int) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 3:
            continue
        parts += [""] * (fields - len(parts))
        rows.append(parts)
    return rows


def _number(text: str) -> int | None:
    if text.isdigit():
        value = int(text)
        return value if value <= _MAX_ID else None
    return None


def resolve_user(user: str, passwd: str | None, group: str | None) -> ExecUser:
    """Resolve ``user`` (``name``, ``uid``, ``uid:gid``, ``name:group``...) to ids.

    ``passwd`` and ``group`` are the image's file contents, None when the file is absent.
    Raises :class:`UnknownUser` where Docker fails the step.
    """
    user_arg, _, group_arg = user.partition(":")
    if user_arg == "" and user:
        raise UnknownUser(user, "the user part is empty")
    uid_num = _number(user_arg) if user_arg else 0
    if user_arg and uid_num is None and user_arg.isdigit():
        raise UnknownUser(user, f"uid {user_arg} is out of range")

    entry = None
    for row in _entries(passwd, 7):
        row_uid = _number(row[2])
        if (uid_num is not None and row_uid == uid_num) or (
            uid_num is None and row[0] == user_arg
        ):
            entry = row
            break
    if entry is not None:
        name, uid, gid, home = entry[0], int(entry[2]), _number(entry[3]) or 0, entry[5] or "/"
    elif uid_num is not None:
        name, uid, gid, home = "", uid_num, 0, "/"
    else:
        raise UnknownUser(user, f"no user named {user_arg!r} in the image's /etc/passwd")

    groups: tuple[int, ...] = ()
    if group_arg:
        gid_num = _number(group_arg)
        found = None
        for row in _entries(group, 4):
            if (gid_num is not None and _number(row[2]) == gid_num) or (
                gid_num is None and row[0] == group_arg
            ):
                found = row
                break
        if found is not None:
            gid = int(found[2])
        elif gid_num is not None:
            gid = gid_num
        else:
            raise UnknownUser(user, f"no group named {group_arg!r} in the image's /etc/group")
    elif name:
        groups = tuple(
            int(row[2])
            for row in _entries(group, 4)
            if _number(row[2]) is not None and name in row[3].split(",")
        )
    return ExecUser(uid=uid, gid=gid, groups=groups, home=home, name=name)
