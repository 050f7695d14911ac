"""builder.steps.copy_write: a COPY's items written into the upper dir, each directory on
the way looked up once (``made``), and looked up again once something replaced it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.context import ContextError
from builder.steps.copy_write import CopyItem, write_items
from builder.steps.copyup import forget_dirs, make_parents


def test_forget_dirs_takes_the_directory_and_what_is_below_it() -> None:
    made = {"a", "a/b", "a/b/c", "ab", "x"}
    forget_dirs(made, "/a/b/")
    assert made == {"a", "ab", "x"}


def test_each_parent_is_looked_up_once(tmp_path: Path) -> None:
    asked: list[str] = []

    def lookup(rel: str) -> None:
        asked.append(rel)

    made: set[str] = set()
    for name in ("f1", "f2", "sub/f3"):
        make_parents(tmp_path, f"app/lib/{name}".rsplit("/", 1)[0], lookup, None, made)
    assert asked == ["app", "app/lib", "app/lib/sub"]
    assert (tmp_path / "app/lib/sub").is_dir() and made == {"app", "app/lib", "app/lib/sub"}


def test_a_directory_replaced_by_a_file_and_back(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_text("file\n")
    (src / "d" / "g").write_text("g\n")
    upper = tmp_path / "upper"
    upper.mkdir()
    st_dir, st_file = os.stat(src / "d"), os.stat(src / "f")
    items = [
        CopyItem("out/x", src / "d", st_dir, source=0),
        CopyItem("out/x/y/one", src / "f", st_file, source=0),  # out/x/y made on the way
        CopyItem("out/x", src / "f", st_file, source=1),  # the directory becomes a file
        CopyItem("out/x", src / "d", st_dir, source=2),  # and a directory again
        CopyItem("out/x/y/two", src / "d" / "g", os.stat(src / "d" / "g"), source=2),
    ]
    write_items(upper, items, lambda rel: None, None, None)
    assert (upper / "out/x/y/two").read_text() == "g\n"
    assert not (upper / "out/x/y/one").exists()


def test_a_file_changed_since_its_content_key_was_made_is_not_copied(tmp_path: Path) -> None:
    """The build cache keys a COPY by the content it hashed when it planned the step: a
    file rewritten between that and the copy would put other bytes under that key, and a
    later build of the first content would get them."""
    src = tmp_path / "app.conf"
    src.write_text("hashed\n")
    st = os.stat(src)  # what the content key was made from
    src.write_text("written meanwhile\n")
    upper = tmp_path / "upper"
    upper.mkdir()
    with pytest.raises(ContextError, match=r"app.conf' changed while the build copied it "
                                           r"\(.*\); rerun the build once nothing writes"):
        write_items(upper, [CopyItem("app.conf", src, st)], lambda rel: None, None, None)
    # unchanged, it is copied with the time it had
    st = os.stat(src)
    write_items(upper, [CopyItem("again.conf", src, st)], lambda rel: None, None, None)
    assert (upper / "again.conf").read_text() == "written meanwhile\n"
    assert (upper / "again.conf").stat().st_mtime_ns == st.st_mtime_ns
    src.unlink()  # removed since
    with pytest.raises(ContextError, match="app.conf' was removed while the build copied it"):
        write_items(upper, [CopyItem("gone.conf", src, st)], lambda rel: None, None, None)
