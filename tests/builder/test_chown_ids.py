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
