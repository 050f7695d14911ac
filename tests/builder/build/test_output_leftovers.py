"""An archive a build writes (``-o type=tar|oci|docker,dest=FILE``) goes to a temporary
file beside ``FILE`` (``.FILE.XXXXXXXX.tmp``) renamed onto it at the end. A build killed
outright (SIGKILL, a CI job's timeout) leaves that file, as large as the image was when it
died; the next build to ``FILE`` removes it, but not the one a build still running writes,
nor anything else of the directory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from builder.outputs import _to_file

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


async def test_what_a_killed_build_left_beside_its_archive_is_removed_by_the_next(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "image.tar"
    others = [out / ".image.tar.tmp", out / ".image.tar.abc.tmp", out / ".other.tar.abcdefgh.tmp"]
    for p in others:
        p.write_bytes(b"not a build's")
    writers = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, str(dest), stdout=subprocess.PIPE) for _ in range(2)]
    try:
        made = [Path((await w.stdout.readline()).decode().strip())
                for w in writers if w.stdout is not None]
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
    finally:
        for w in writers:
            if w.returncode is None:
                w.kill()
            await w.communicate()
