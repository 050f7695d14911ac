"""``oci-archive:FILE[:TAG]``: an OCI image layout in a tar, as skopeo, podman and
BuildKit's ``--output type=oci,dest=FILE`` write it (``oci-layout``, ``index.json`` and
``blobs/<alg>/<hex>`` at the top of the tar).

Read, the archive is unpacked into a temporary directory (``TMPDIR``) and copied from as
``oci:DIR[:TAG]``; written, the image goes into a temporary layout beside ``FILE``
(``.FILE.XXXX.tmp``: on the archive's file system, not in ``TMPDIR``) that is packed into
an archive in that directory and renamed to ``FILE`` (replacing it, as skopeo does) only
when the copy succeeded: a failed copy leaves neither a partial archive nor a temporary
file. The directory is ``flock``-ed while in use: one that a killed copy left behind
(SIGKILL, a CI job's timeout: as large as the image) is removed by the next copy to
``FILE``, never one a copy still running uses.

An archive is untrusted input: only regular files and directories are unpacked, each
inside the temporary directory (``tarfile``'s ``data`` filter refuses absolute names,
``..``, links and devices), and every blob read from it is verified against its digest
as any layout's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .endpoints import Endpoint
from .layouts import LayoutError, unwritable
from .leftovers import held_temporary

__all__ = ["unpacked"]


@contextlib.asynccontextmanager
async def unpacked(src: Endpoint, dst: Endpoint, say: Callable[[str], None] = lambda _: None
                   ) -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    """``src`` and ``dst`` with each ``oci-archive`` endpoint as a temporary ``oci`` one:
    the source unpacked before, the destination packed after a copy that succeeded
    (``say`` tells each, a line for the progress)."""
    named: dict[str, str] = {}  # a temporary layout's path -> the archive's name
    async with contextlib.AsyncExitStack() as stack:  # the layouts removed off the loop
        if src.kind == "oci-archive":
            assert src.path is not None
            tmp = _temporary(stack, prefix="pybuild-oci-")
            say(f"unpacking {src}")
            await asyncio.to_thread(_unpack, src.path, tmp)
            named[str(tmp)] = f"oci-archive:{src.path}"
            src = replace(src, kind="oci", path=tmp)
        if dst.kind == "oci-archive":
            assert dst.path is not None
            archive = dst.path
            _check_archive_destination(archive)
            tmp = _beside(stack, archive)
            named[str(tmp / "layout")] = f"oci-archive:{archive}"
            dst = replace(dst, kind="oci", path=tmp / "layout")
        try:
            yield src, dst
        except LayoutError as exc:  # in the archive's name, not the temporary directory's
            text = str(exc)
            for path, name in named.items():
                text = text.replace(f"oci:{path}", name).replace(path, name)
            text = text.replace("oci:DIR:", "oci-archive:FILE:")
            raise LayoutError(text) from exc
        if dst.path is not None and str(dst.path) in named:
            say(f"writing {named[str(dst.path)]}")
            try:
                await asyncio.to_thread(_pack, dst.path, archive)
            except OSError as exc:
                layout_error = unwritable(exc, f"oci-archive:{archive}")
                if layout_error is None:
                    raise
                raise layout_error from exc


def _temporary(stack: contextlib.AsyncExitStack, **where: Any) -> Path:
    """A new temporary directory (``tempfile.mkdtemp``'s ``where``), removed in a worker
    thread when ``stack`` closes: a layout of gigabytes takes a while to delete."""
    import tempfile  # here: a pull or push that goes through no archive does without

    made = tempfile.TemporaryDirectory(**where)
    stack.push_async_callback(asyncio.to_thread, made.cleanup)
    return Path(made.name)


def _beside(stack: contextlib.AsyncExitStack, archive: Path) -> Path:
    """A temporary directory next to ``archive`` (``.FILE.XXXXXXXX.tmp``, held and removed
    when ``stack`` closes, whatever failed; one a killed copy left is removed first:
    :mod:`.leftovers`): the layout takes as much room as the archive, so it goes on the
    file system the archive goes to, not into a small ``TMPDIR``."""
    import shutil

    try:
        fd, made = held_temporary(archive, directory=True)
    except OSError as exc:
        layout_error = unwritable(exc, f"oci-archive:{archive}")
        if layout_error is None:
            raise
        raise layout_error from exc
    stack.callback(os.close, fd)  # after the removal below (the stack unwinds in reverse)
    stack.push_async_callback(asyncio.to_thread, shutil.rmtree, made, True)
    return Path(made)


def _check_archive_destination(path: Path) -> None:
    if path.is_dir():
        raise LayoutError(f"oci-archive:{path} is a directory: name the archive file to write "
                          f"(oci-archive:{path / 'image.tar'}), or write a layout directory "
                          f"with oci:{path}")
    if not path.parent.is_dir():
        raise LayoutError(f"oci-archive:{path}: directory {path.parent} does not exist; "
                          "create it, or name a file in a directory that exists")


def _unpack(archive: Path, into: Path) -> None:
    """The layout in ``archive`` unpacked into ``into`` (LayoutError when it is none)."""
    import tarfile

    def only_files(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if not (member.isfile() or member.isdir()):
            raise LayoutError(f"oci-archive:{archive}: {member.name!r} is neither a file nor a "
                              "directory; an OCI layout holds only those")
        return tarfile.data_filter(member, path)

    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, filter=only_files)
    except FileNotFoundError as exc:
        raise LayoutError(f"oci-archive:{archive} does not exist") from exc
    except IsADirectoryError as exc:
        raise LayoutError(f"oci-archive:{archive} is a directory; an OCI layout directory is "
                          f"read with oci:{archive}") from exc
    except tarfile.FilterError as exc:
        raise LayoutError(f"oci-archive:{archive}: {exc}; it is refused") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise LayoutError(f"oci-archive:{archive} is not a readable tar ({exc})") from exc
    if not (into / "index.json").is_file():
        raise LayoutError(f"oci-archive:{archive} holds no OCI layout (no index.json at the "
                          "top of the tar)")


def _pack(layout: Path, archive: Path) -> None:
    """``layout`` as a tar at ``archive``: ``oci-layout`` and ``index.json`` first, then
    the blobs in name order, owned by root with no timestamps (the same layout makes the
    same bytes)."""
    import shutil
    import tarfile

    tmp = layout.with_name("archive.tar")  # in the copy's own directory beside ``archive``
    names = ["oci-layout", "index.json", "blobs"]
    for top, dirs, files in os.walk(layout / "blobs"):
        dirs.sort()
        rel = Path(top).relative_to(layout)
        names += [str(rel / d) for d in dirs] + [str(rel / f) for f in sorted(files)]

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                tar.add(layout / name, arcname=name, recursive=False, filter=plain)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, archive)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        shutil.rmtree(layout, ignore_errors=True)
