"""What one writer of an OCI image layout may take back when it fails.

Several processes may write into one layout at once (parallel CI jobs copying images, or
exporting a build cache, to one directory), and they share blobs: a layer one of them
wrote may be the layer another one found there and skipped. So a writer that fails
removes only the blob files it wrote itself that no other writer needs:

- every blob file a writer wrote or relies on is *held* (a shared ``flock`` on the file)
  until it ends, so a failed writer leaves alone what a writer still running holds;
- what ``index.json`` lists (and the manifests and blobs those entries reach) is kept: a
  writer that ended holds nothing, its tag does;
- a failed writer decides under the layout directory's lock (the one each ``index.json``
  update holds), so no tag lands between its look at ``index.json`` and its removals, and
  it takes a blob file only under an exclusive ``flock`` of its own; a writer that then
  finds the file gone writes it again.

A blob counts as the writer's from the moment it sets out to write it (a write cut short
by a cancellation may still land), and so do its own temporary files (named with its
process id); those of a writer that was killed (its process is gone) are removed by the
next writer when it starts. ``index.json`` is only ever replaced whole (through a temporary file), so it
is valid at every moment; a failed writer never touches it, nor another writer's
temporary files. The directories it made (the layout's, ``blobs/<alg>``) go when they are
left empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cas import Digest

from ..oci import INDEX_TYPES, MANIFEST_TYPES
from .layouts import LayoutError, OciLayout, unwritable

__all__ = ["Claims", "undone_on_failure"]

# A manifest read to find what it references is at most this large (a registry refuses
# larger ones too); larger blobs are layers.
_MANIFEST_MAX = 4 << 20


class Claims:
    """The blob files one writer of a layout holds (wrote, or found and relies on), and
    the ones it wrote itself: the only ones it may remove when it fails."""

    def __init__(self) -> None:
        self.held: dict[Path, int] = {}
        self.created: set[Path] = set()
        # writes whose writer was cancelled, still under way: awaited before undo
        self.writing: set[asyncio.Future[None]] = set()

    def hold(self, path: Path) -> bool:
        """Hold the blob file ``path`` (blocking: run in a thread); False when it is not
        there (never written, or removed by a failed writer meanwhile): write it."""
        if path in self.held:
            return True
        try:
            fd = _open(path)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a failed writer removing it
            if not _still_at(fd, path):
                os.close(fd)
                return False
        except BaseException:
            os.close(fd)
            raise
        self.held[path] = fd
        return True

    def release(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()

    def undo(self, root: Path, existed: set[Path]) -> None:
        """A failed writer's cleanup (blocking): its own blob files that no other writer
        holds and ``index.json`` does not reach, then the directories it made
        (not in ``existed``) left empty."""
        self.release()
        try:
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)  # no tag() lands while this decides
            needed = _referenced(root)
            if needed is None:  # an index.json that cannot be read: nothing is known unneeded
                return
            for path in sorted(self.created - needed):
                _remove_unheld(path)
            for path in self.created:  # this process's own temporary files of a write cut short
                for tmp in path.parent.glob(f"{glob.escape(path.name)}.{os.getpid()}-*.tmp"):
                    with contextlib.suppress(OSError):
                        tmp.unlink()
            for made in sorted({p.parent for p in self.created} | {root / "blobs", root},
                               key=lambda p: len(p.parts), reverse=True):
                if made not in existed:
                    with contextlib.suppress(OSError):
                        made.rmdir()  # only when empty: another writer's files stay
        finally:
            os.close(dir_fd)


@contextlib.asynccontextmanager
async def undone_on_failure(path: Path | None) -> AsyncIterator[OciLayout | None]:
    """Around a write into the OCI layout ``path`` (None: no layout), the layout to write
    through (its blobs held by this writer until the block ends). When the block fails,
    the blob files it wrote that no other writer needs are removed (see the module's
    docstring), and the directories it made when left empty: a full disk keeps neither a
    half layout nor its space. The destination's own full or unwritable file system is a
    LayoutError that names it."""
    if path is None:
        yield None
        return
    existed = await asyncio.to_thread(_layout_dirs, path)
    await asyncio.to_thread(_remove_abandoned, path)
    claims = Claims()
    try:
        yield OciLayout(path, claims)
    except BaseException as exc:
        if claims.writing:  # so that none lands after the cleanup
            await asyncio.wait(claims.writing)
        await asyncio.to_thread(claims.undo, path, existed)
        layout_error = unwritable(exc, f"oci:{path}")
        if layout_error is not None:
            raise layout_error from exc
        raise
    finally:
        claims.release()


# A writer's temporary file: ``<name>.<pid>-<8 hex>.tmp`` (layouts._replace_file, Store.export).
_TEMPORARY = r".+\.(\d+)-[0-9a-f]{8}\.tmp"  # compiled on first use (re caches it)


def _remove_abandoned(root: Path) -> None:
    """The temporary files in the layout ``root`` (its top, ``blobs/<alg>``) of writers
    whose process is gone (SIGKILL, a CI job's timeout): a blob cut short can be as large
    as a layer. A process this one cannot see (another PID namespace) may lose one: its
    rename then fails and it writes the blob again (OciLayout._place)."""
    dirs = [root, *((root / "blobs").iterdir() if (root / "blobs").is_dir() else ())]
    for where in dirs:
        try:
            names = os.listdir(where)
        except OSError:  # not a directory, or gone
            continue
        for name in names:
            match = re.fullmatch(_TEMPORARY, name)
            if match is None or _alive(int(match[1])):
                continue
            with contextlib.suppress(OSError):
                (where / name).unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's, running
        return True
    return True


def _layout_dirs(root: Path) -> set[Path]:
    """The layout's directories that exist now (the layout's, ``blobs``, ``blobs/<alg>``)."""
    if not root.is_dir():
        return set()
    blobs = root / "blobs"
    return {root, *([blobs, *(p for p in blobs.iterdir() if p.is_dir())] if blobs.is_dir() else [])}


def _open(path: Path) -> int:
    """``path`` opened to be held; a writer holds a descriptor per blob, so a large image
    may pass the soft limit of open files: it is raised (up to the hard limit) then."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            raise
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft >= hard:
            raise LayoutError(f"cannot hold {path}: {soft} files are open, the most this process "
                              "may open; raise the limit (ulimit -n)") from exc
        wanted = soft * 2 if hard == resource.RLIM_INFINITY else min(soft * 2, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return _open(path)


def _still_at(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _remove_unheld(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _still_at(fd, path):
            path.unlink()
    except OSError:  # held by another writer (BlockingIOError), or gone
        pass
    finally:
        os.close(fd)


def _referenced(root: Path) -> set[Path] | None:
    """The blob files ``index.json`` reaches (its entries, and what the manifests and
    indexes among them reference); None when it exists but cannot be read."""
    try:
        index = json.loads((root / "index.json").read_bytes())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or not isinstance(index.get("manifests") or [], list):
        return None
    needed: set[Path] = set()
    todo: list[Any] = list(index.get("manifests") or [])  # umoci init writes null
    while todo:
        desc = todo.pop()
        if not isinstance(desc, dict):
            continue
        try:
            digest = Digest.parse(str(desc.get("digest")))
        except ValueError:
            continue
        path = root / "blobs" / digest.algorithm / digest.encoded
        if path in needed:
            continue
        needed.add(path)
        kind = desc.get("mediaType")
        if kind not in MANIFEST_TYPES | INDEX_TYPES and kind is not None:
            continue
        try:
            if path.stat().st_size > _MANIFEST_MAX:
                continue
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            todo.append(doc.get("config"))
            todo += [d for key in ("layers", "manifests", "blobs") if isinstance(doc.get(key), list)
                     for d in doc[key]]
    return needed
