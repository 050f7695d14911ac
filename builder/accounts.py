"""The image's account databases, ``/etc/passwd`` and ``/etc/group``: one reader for
every step that turns a user or group name into ids (``USER`` for RUN, ``COPY
--chown``, the owner of directories ``WORKDIR`` creates).

Read as runc's ``libcontainer/user`` reads them: one entry a line, fields separated by
``:``; blank lines, ``#`` comments and lines of fewer than three fields are skipped,
missing trailing fields are empty. An entry's id is a decimal number up to 2**32 - 2 (a
Linux id: runc takes ``big:x:3000000000:...`` as it is, and so ``USER big`` and ``COPY
--chown=big`` under Docker); an entry whose uid (passwd) or gid (group) is not one is
skipped, so a name it carries is unknown. An id written as a number where no entry has it
(``USER 3000000000``) must be at most 2**31 - 1, as runc requires. The first entry that
matches wins.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_ENTRY_ID", "MAX_ID", "Group", "User", "find_group", "find_user", "parse_id", "read_group",
           "read_passwd"]

MAX_ID = 2**31 - 1
MAX_ENTRY_ID = 2**32 - 2


def parse_id(text: str, limit: int = MAX_ID) -> int | None:
    """``text`` as a uid or gid, or None when it is not a decimal number up to ``limit``."""
    if text.isascii() and text.isdigit():
        value = int(text)
        return value if value <= limit else None
    return None


@dataclass(frozen=True, slots=True)
class User:
    """An /etc/passwd entry: ``gid`` None when its field is not a number, ``home`` as
    written (may be empty)."""

    name: str
    uid: int
    gid: int | None
    home: str


@dataclass(frozen=True, slots=True)
class Group:
    """An /etc/group entry and the user names it lists as members."""

    name: str
    gid: int
    members: tuple[str, ...]


def _rows(text: str | bytes | None, fields: int) -> list[list[str]]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
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


def read_passwd(text: str | bytes | None) -> list[User]:
    """The entries of an /etc/passwd (None: the file is absent, no entries)."""
    out = []
    for row in _rows(text, 7):
        uid = parse_id(row[2], MAX_ENTRY_ID)
        if uid is not None:
            out.append(User(row[0], uid, parse_id(row[3], MAX_ENTRY_ID), row[5]))
    return out


def read_group(text: str | bytes | None) -> list[Group]:
    """The entries of an /etc/group (None: the file is absent, no entries)."""
    out = []
    for row in _rows(text, 4):
        gid = parse_id(row[2], MAX_ENTRY_ID)
        if gid is not None:
            out.append(Group(row[0], gid, tuple(m for m in row[3].split(",") if m)))
    return out


def find_user(users: list[User], spec: str) -> User | None:
    """The entry ``spec`` names: by uid when it is a number, else by name."""
    uid = parse_id(spec, MAX_ENTRY_ID)
    for user in users:
        if (user.uid == uid) if uid is not None else (user.name == spec):
            return user
    return None


def find_group(groups: list[Group], spec: str) -> Group | None:
    """The entry ``spec`` names: by gid when it is a number, else by name."""
    gid = parse_id(spec, MAX_ENTRY_ID)
    for group in groups:
        if (group.gid == gid) if gid is not None else (group.name == spec):
            return group
    return None
