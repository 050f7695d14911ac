"""An archive a build writes (``-o type=tar|oci|docker,dest=FILE``) goes to a temporary
file beside ``FILE`` (``.FILE.XXXXXXXX.tmp``) renamed onto it at the end, and a new
``-o type=local,dest=DIR`` to a temporary directory beside ``DIR``. A build killed
outright (SIGKILL, a CI job's timeout) leaves that file or directory, as large as the
image was when it died; the next build beside it removes it, but not the one a build
still running writes, nor anything else of the directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from builder.outputs import Output, _to_file, export

_WRITER = """
import sys, time
from pathlib import Path
from registry.client.leftovers import held_temporary

fd, path = held_temporary(Path(sys.argv[1]), directory=False)
with open(fd, "wb", closefd=False) as f:
    f.write(b"x" * 100_000)
print(path, flush=True)
time.sleep(60)
"""


@contextlib.asynccontextmanager
async def _two_writers(script: str, dest: Path
                       ) -> AsyncIterator[tuple[list[asyncio.subprocess.Process], list[Path]]]:
    """Two processes running ``script`` for ``dest``, and what each printed it writes to
    (a path); both killed at the end, whatever the test did with them."""
    writers = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(dest), stdout=subprocess.PIPE) for _ in range(2)]
    try:
        yield writers, [Path((await w.stdout.readline()).decode().strip())
                        for w in writers if w.stdout is not None]
    finally:
        for w in writers:
            if w.returncode is None:
                w.kill()
            await w.communicate()


async def test_what_a_killed_build_left_beside_its_archive_is_removed_by_the_next(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "image.tar"
    others = [out / ".image.tar.tmp", out / ".image.tar.abc.tmp", out / ".other.tar.abcdefgh.tmp"]
    for p in others:
        p.write_bytes(b"not a build's")
    async with _two_writers(_WRITER, dest) as (writers, made):
        assert all(p.is_file() for p in made)
        writers[0].kill()
        await writers[0].wait()  # its flock goes with it, its file stays

        async def chunks() -> AsyncIterator[bytes]:
            yield b"archive"

        await _to_file(chunks(), dest)
        assert dest.read_bytes() == b"archive"
        assert not made[0].exists(), "the killed build's file stays behind"
        assert made[1].is_file(), "a running build's file was taken"
        assert sorted(out.iterdir()) == sorted([dest, made[1], *others])


_LOCAL_WRITER = """
import asyncio, sys
from pathlib import Path
from builder.outputs import Output, export

async def rootfs(root: Path) -> None:
    (root / "half-written").write_bytes(b"x" * 100_000)
    print(root, flush=True)
    await asyncio.sleep(60)

asyncio.run(export(Output("local", Path(sys.argv[1])), None, None, (), rootfs, Path(".")))
"""


async def test_what_a_killed_build_left_beside_its_local_output_is_removed_by_the_next(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "rootfs"
    others = [out / ".rootfs", out / ".rootfs.tmp", out / ".other.abcdefgh.tmp"]
    for p in others:
        p.mkdir()
    async with _two_writers(_LOCAL_WRITER, dest) as (writers, made):
        assert all((p / "half-written").is_file() for p in made)
        assert all(p.parent == out and p.name.startswith(".rootfs.") for p in made)
        writers[0].kill()  # SIGKILL: no handler, no finally runs
        await writers[0].wait()

        async def rootfs(root: Path) -> None:
            (root / "complete").write_text("yes\n")

        await export(Output("local", dest), None, None, (), rootfs, tmp_path)  # type: ignore[arg-type]
        assert (dest / "complete").read_text() == "yes\n"
        assert sorted(p.name for p in dest.iterdir()) == ["complete"]
        assert not made[0].exists(), "the killed build's directory stays behind"
        assert (made[1] / "half-written").is_file(), "a running build's directory was taken"
        assert sorted(out.iterdir()) == sorted([dest, made[1], *others])


async def test_what_a_killed_build_left_goes_when_the_next_writes_into_an_existing_dir(
        tmp_path: Path) -> None:
    # The destination made meanwhile (a CI script's `mkdir -p out`): the next build writes
    # into it, and the killed build's directory beside it goes all the same (a non-root
    # build's is partly owned by its namespace's ids, which the user cannot remove).
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "rootfs"
    async with _two_writers(_LOCAL_WRITER, dest) as (writers, made):
        writers[0].kill()
        await writers[0].wait()
        dest.mkdir()

        async def rootfs(root: Path) -> None:
            (root / "complete").write_text("yes\n")

        await export(Output("local", dest), None, None, (), rootfs, tmp_path)  # type: ignore[arg-type]
        assert (dest / "complete").read_text() == "yes\n"
        assert not made[0].exists(), "the killed build's directory stays behind"
        assert (made[1] / "half-written").is_file(), "a running build's directory was taken"


def test_a_temporary_directory_taken_before_it_is_held_is_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two builds to one destination start at once: the second's removal of abandoned
    # temporaries may remove the first's new directory before the first holds it (an
    # exclusive lock is granted). The first makes another instead of failing ("cannot
    # write DIR: no such file or directory").
    import tempfile

    from registry.client.leftovers import held_temporary

    real = tempfile.mkdtemp
    made: list[str] = []

    def taken_at_once(*args: Any, **kwargs: Any) -> str:
        made.append(real(*args, **kwargs))
        if len(made) == 1:
            os.rmdir(made[0])  # as the other writer's remove_abandoned does
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", taken_at_once)
    fd, path = held_temporary(tmp_path / "rootfs", directory=True)
    try:
        assert path == made[1] and Path(path).is_dir()
        assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]
    finally:
        os.close(fd)
