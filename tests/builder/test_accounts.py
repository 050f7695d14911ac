"""builder.accounts: the one reader of an image's /etc/passwd and /etc/group."""

from __future__ import annotations

import pytest

from builder.accounts import (
    MAX_ENTRY_ID,
    MAX_ID,
    Group,
    User,
    find_group,
    find_user,
    parse_id,
    read_group,
    read_passwd,
)

PASSWD = b"""# comment
root:x:0:0:root:/root:/bin/sh

  daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\t\r
broken:x
nohome:x:7:7
badgid:x:8:staff:::
baduid:x:eight:8:::
dup:x:10:10::/first:
dup:x:11:11::/second:
big:x:2147483648:1:::
biggest:x:4294967294:4294967294:::
minus1:x:4294967295:1:::
"""

GROUP = """root:x:0:
wheel:x:10:root,dup
empty:x:20:
badgid:x:x:dup
"""


def test_passwd_entries_follow_runc_rules() -> None:
    assert read_passwd(PASSWD) == [
        User("root", 0, 0, "/root"),
        User("daemon", 1, 1, "/usr/sbin"),  # surrounding blanks stripped
        User("nohome", 7, 7, ""),  # missing fields are empty
        User("badgid", 8, None, ""),
        User("dup", 10, 10, "/first"),
        User("dup", 11, 11, "/second"),
        # ids past 2**31 - 1 are Linux ids all the same: runc (and so Docker) takes them
        User("big", 2147483648, 1, ""),
        User("biggest", 4294967294, 4294967294, ""),
    ]  # comments, blank and short lines, and non-numeric or no-Linux-id uids skipped


def test_group_entries_and_members() -> None:
    assert read_group(GROUP) == [Group("root", 0, ()), Group("wheel", 10, ("root", "dup")),
                                 Group("empty", 20, ())]


def test_absent_files_have_no_entries() -> None:
    assert read_passwd(None) == [] and read_group(None) == []


@pytest.mark.parametrize(("spec", "found"), [
    ("root", "root"), ("0", "root"), ("000", "root"), ("dup", "/first"), ("11", "/second"),
    ("nobody", None), ("99", None), ("baduid", None), ("", None),
])
def test_find_user_by_name_or_uid(spec: str, found: str | None) -> None:
    user = find_user(read_passwd(PASSWD), spec)
    if found is None:
        assert user is None
    else:
        assert user is not None and found in (user.name, user.home)


@pytest.mark.parametrize(("spec", "gid"), [
    ("wheel", 10), ("10", 10), ("empty", 20), ("badgid", None), ("30", None),
])
def test_find_group_by_name_or_gid(spec: str, gid: int | None) -> None:
    group = find_group(read_group(GROUP), spec)
    assert (group.gid if group else None) == gid


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("42", 42), (str(MAX_ID), MAX_ID), (str(MAX_ID + 1), None), ("", None),
    ("-1", None), ("1a", None), ("\u00b2", None),
])
def test_parse_id(text: str, value: int | None) -> None:
    assert parse_id(text) == value


def test_an_entry_id_runs_to_the_last_linux_id() -> None:
    assert parse_id("4294967294", MAX_ENTRY_ID) == 4294967294 == MAX_ENTRY_ID
    assert parse_id("4294967295", MAX_ENTRY_ID) is None  # (uid_t) -1
    assert find_user(read_passwd(PASSWD), "2147483648") == User("big", 2147483648, 1, "")
    assert find_group(read_group("nfs:x:4294967294:\n"), "nfs") == Group("nfs", 4294967294, ())
