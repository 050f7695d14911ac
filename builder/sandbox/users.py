"""Resolve ``USER`` against the image's /etc/passwd and /etc/group, as Docker does.

Docker (runc's ``user.GetExecUser``) rules, followed here:

- ``""`` is root: uid 0, gid 0; so is an empty user part (``:staff`` is root with the
  group ``staff``, ``:`` is root), as runc's default user.
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

from ..accounts import MAX_ID, find_group, find_user, parse_id, read_group, read_passwd
from .errors import UnknownUser

__all__ = ["ExecUser", "resolve_user"]


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"
    name: str = ""


def resolve_user(user: str, passwd: str | None, group: str | None) -> ExecUser:
    """Resolve ``user`` (``name``, ``uid``, ``uid:gid``, ``name:group``...) to ids.

    ``passwd`` and ``group`` are the image's file contents, None when the file is absent.
    Raises :class:`UnknownUser` where Docker fails the step.
    """
    user_arg, _, group_arg = user.partition(":")
    uid_num = parse_id(user_arg) if user_arg else 0

    entry = find_user(read_passwd(passwd), user_arg or "0")
    if entry is not None:
        name, uid, gid, home = entry.name, entry.uid, entry.gid or 0, entry.home or "/"
    elif uid_num is not None:
        name, uid, gid, home = "", uid_num, 0, "/"
    elif user_arg.isascii() and user_arg.isdigit():  # a number no entry has: runc's range (ErrRange)
        raise UnknownUser(user, f"uid {user_arg} is out of range (one that /etc/passwd does "
                                f"not list must be at most {MAX_ID})")
    else:
        raise UnknownUser(user, f"no user named {user_arg!r} in the image's /etc/passwd")

    groups: tuple[int, ...] = ()
    if group_arg:
        found = find_group(read_group(group), group_arg)
        gid_num = parse_id(group_arg)
        if found is not None:
            gid = found.gid
        elif gid_num is not None:
            gid = gid_num
        elif group_arg.isascii() and group_arg.isdigit():
            raise UnknownUser(user, f"gid {group_arg} is out of range (one that /etc/group "
                                    f"does not list must be at most {MAX_ID})")
        else:
            raise UnknownUser(user, f"no group named {group_arg!r} in the image's /etc/group")
    elif name:
        groups = tuple(g.gid for g in read_group(group) if name in g.members)
    return ExecUser(uid=uid, gid=gid, groups=groups, home=home, name=name)
