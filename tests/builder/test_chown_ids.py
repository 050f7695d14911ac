"""``--chown`` ids as BuildKit's file op reads them: names the image lacks are no error."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.steps.owners import chown_ids, workdir_owner


@pytest.fixture
def lowers(tmp_path: Path) -> list[Path]:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                         "tester:x:1000:1000::/home/tester:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:tester\n")
    return [tmp_path]


@pytest.mark.parametrize(("spec", "ids"), [
    ("tester", (1000, 1000)), ("tester:staff", (1000, 50)), ("1234", (1234, 1234)),
    ("1234:staff", (1234, 50)), (":staff", (0, 50)), ("tester:", (1000, 0)),
    # unknown names: the user is 0:0, the group leaves the user's
    ("ghost", (0, 0)), ("ghost:staff", (0, 50)), ("tester:ghosts", (1000, 1000)),
    ("1234:ghosts", (1234, 1234)), ("ghost:ghosts", (0, 0)),
])
def test_chown_ids(lowers: list[Path], spec: str, ids: tuple[int, int]) -> None:
    assert chown_ids(spec, lowers) == ids
    assert workdir_owner(spec, lowers) == ids


def test_an_image_without_account_files_gives_names_root(tmp_path: Path) -> None:
    assert chown_ids("app:app", [tmp_path]) == (0, 0)
    assert chown_ids("1000:app", [tmp_path]) == (1000, 1000)


def test_ids_past_two_to_the_31_from_the_account_files(tmp_path: Path) -> None:
    """``COPY --chown=big`` owns by the entry's ids however large (as BuildKit), not
    root's, as if the name were unknown."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("big:x:3000000000:4294967294::/home/big:/bin/sh\n")
    (tmp_path / "etc/group").write_text("biggrp:x:4294967294:\nmid:x:2097152:\n")
    assert chown_ids("big", [tmp_path]) == (3000000000, 4294967294)
    assert chown_ids("big:mid", [tmp_path]) == (3000000000, 2097152)
    assert chown_ids("4294967294:biggrp", [tmp_path]) == (4294967294, 4294967294)
    assert workdir_owner("big", [tmp_path]) == (3000000000, 4294967294)


@pytest.mark.parametrize(("spec", "message"), [
    ("4294967295", "uid 4294967295 is out of range"),  # (uid_t) -1: chown would keep root
    ("99999999999", "uid 99999999999 is out of range"),
    ("1:4294967296", "gid 4294967296 is out of range"),
])
def test_a_number_that_is_no_linux_id_is_an_error(lowers: list[Path], spec: str,
                                                   message: str) -> None:
    # BuildKit makes the files root's, silently; os.chown raised OverflowError
    with pytest.raises(ValueError, match=f"{message}: ids run from 0 to 4294967294"):
        chown_ids(spec, lowers)
    assert workdir_owner(spec, lowers) == (0, 0)  # as BuildKit: USER could never run
