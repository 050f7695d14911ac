"""USER resolution follows Docker (runc's GetExecUser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.sandbox import ExecUser, UnknownUser, resolve_user

FILES = Path(__file__).parent / "testfiles" / "users"
PASSWD = (FILES / "passwd").read_text()
GROUP = (FILES / "group").read_text()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ExecUser(0, 0, (10,), "/root", "root")),
        ("root", ExecUser(0, 0, (10,), "/root", "root")),
        ("app", ExecUser(1000, 1000, (100, 999), "/home/app", "app")),
        ("1000", ExecUser(1000, 1000, (100, 999), "/home/app", "app")),
        ("builder", ExecUser(1001, 100, (100, 10), "/home/builder", "builder")),
        ("app:docker", ExecUser(1000, 999, (), "/home/app", "app")),
        ("app:10", ExecUser(1000, 10, (), "/home/app", "app")),
        ("app:4242", ExecUser(1000, 4242, (), "/home/app", "app")),
        ("5000", ExecUser(5000, 0, (), "/", "")),
        ("5000:5001", ExecUser(5000, 5001, (), "/", "")),
        ("nohome", ExecUser(1002, 1002, (), "/", "nohome")),
        # an empty user part is the default user, root (runc's GetExecUser; BuildKit)
        (":100", ExecUser(0, 100, (), "/root", "root")),
        (":docker", ExecUser(0, 999, (), "/root", "root")),
        (":", ExecUser(0, 0, (10,), "/root", "root")),
    ],
)
def test_resolve(user: str, expected: ExecUser) -> None:
    assert resolve_user(user, PASSWD, GROUP) == expected


def test_no_passwd_file_numeric_ids_still_work() -> None:
    assert resolve_user("", None, None) == ExecUser(0, 0)
    assert resolve_user("7:8", None, None) == ExecUser(7, 8)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("ghost", "no user named 'ghost'"),
        ("app:ghosts", "no group named 'ghosts'"),
        (":ghosts", "no group named 'ghosts'"),
        ("99999999999", "out of range"),
    ],
)
def test_unknown(user: str, message: str) -> None:
    with pytest.raises(UnknownUser, match=message) as info:
        resolve_user(user, PASSWD, GROUP)
    assert "numeric uid" in str(info.value)  # the message says what to do


def test_entries_with_ids_past_two_to_the_31() -> None:
    """runc takes an entry's ids as they are (Docker runs ``USER big`` as 3000000000);
    only a number no entry has must be at most 2**31 - 1."""
    passwd = "big:x:3000000000:4294967294::/home/big:/bin/sh\n"
    group = "biggrp:x:4294967294:big\n"
    big = ExecUser(3000000000, 4294967294, (4294967294,), "/home/big", "big")
    assert resolve_user("big", passwd, group) == big
    assert resolve_user("3000000000", passwd, group) == big
    assert resolve_user("1:biggrp", passwd, group) == ExecUser(1, 4294967294, (), "/", "")
    assert resolve_user("1:4294967294", passwd, group) == ExecUser(1, 4294967294, (), "/", "")
    with pytest.raises(UnknownUser, match=r"uid 3000000001 is out of range \(one that "
                                          r"/etc/passwd does not list must be at most"):
        resolve_user("3000000001", passwd, group)
    with pytest.raises(UnknownUser, match="gid 3000000000 is out of range"):
        resolve_user("big:3000000000", passwd, group)
