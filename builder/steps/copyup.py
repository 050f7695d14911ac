"""The directories a COPY copies up from the stage's layers, and their metadata as facts.

A COPY writes its files into a fresh upper directory; each directory it must create on
their way that already exists in the stage keeps that directory's mode, owner and time
(copied up, as overlayfs would). Those few directories' metadata is all a running COPY
reads from the layers below it, so it is kept as facts of the stage's key
(:func:`builder.steps.common.cached_facts`) under the list of paths it looked at: a
runner whose cache holds them (an imported cache, where the step ran before with the same
file names) writes the layer without extracting, or fetching, any layer of the stage. In
a multi-stage build's ``COPY --from=build`` onto a cached dependency step, the
dependency layer then stays in the registry (see builder.cache.lazy).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..context import FileStat
from ..image import ImageState
from ..sandbox.rootfs import lower_stat
from .common import StepEnv, cached_facts

__all__ = ["DirLookup", "DirStat", "copied_up", "copy_up_lookup", "dir_facts", "facts_lookup",
           "lowers_lookup", "make_parents", "no_copy_up", "stage_lowers", "valid_dir_facts"]


@dataclass(frozen=True, slots=True)
class DirStat:
    """What copying a directory up keeps: mode bits, owner and mtime (a layer keeps
    whole seconds of it and no atime)."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int


# rel path -> the stage's directory there, or None (nothing there, or not a directory)
DirLookup = Callable[[str], DirStat | None]


def dir_stat(st: os.stat_result | None) -> DirStat | None:
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    return DirStat(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)


def lowers_lookup(lowers: Sequence[Path]) -> DirLookup:
    """The lookup that reads the extracted layers ``lowers`` (top first)."""
    return lambda rel: dir_stat(lower_stat(lowers, rel))


def forget_dirs(made: set[str], rel: str) -> None:
    """Take ``rel`` and what lies below it out of :func:`make_parents`' ``made``."""
    rel = rel.strip("/")
    made.difference_update([d for d in made if d == rel or d.startswith(rel + "/")])


def make_parents(upper: Path, rel: str, lookup: DirLookup,
                 owner: tuple[int, int] | None = None, made: set[str] | None = None) -> None:
    """Create ``rel``'s directories in ``upper``, copying up existing ones' metadata
    (``lookup``); new ones are 0755, ``owner``'s (else root's). ``made``: the directories
    known to be there already (kept up to date here; a caller that removes one of them
    removes it from the set), so that a copy of many files looks each one up once."""
    parts = [p for p in rel.split("/") if p]
    cur = ""
    for p in parts:
        cur = f"{cur}/{p}" if cur else p
        if made is not None:
            if cur in made:
                continue
            made.add(cur)
        d = upper / cur
        if d.is_dir():
            continue
        found = lookup(cur)
        d.mkdir()
        if found is not None:
            os.chmod(d, found.mode)
            os.chown(d, found.uid, found.gid)
            os.utime(d, ns=(found.mtime_ns, found.mtime_ns))
        else:
            os.chmod(d, 0o755)
            if owner is not None:
                os.chown(d, *owner)


class _Written(Protocol):
    @property
    def dest(self) -> str: ...
    @property
    def path(self) -> Path | str | None: ...
    @property
    def st(self) -> os.stat_result | FileStat | None: ...
    @property
    def archive(self) -> bool: ...
    @property
    def data(self) -> bytes | None: ...


def copied_up(items: Iterable[_Written]) -> list[str]:
    """The paths whose metadata writing ``items`` in order (as the COPY writer does)
    looks up in the stage: the directories on their way that no earlier item made."""
    made: set[str] = set()
    wanted: list[str] = []

    def parents(rel: str) -> None:
        cur = ""
        for p in (p for p in rel.split("/") if p):
            cur = f"{cur}/{p}" if cur else p
            if cur not in made:
                made.add(cur)
                wanted.append(cur)

    for it in items:
        parents(posixpath.dirname(it.dest))
        if it.archive or (it.data is None and it.path is None and it.st is None):
            parents(it.dest)
        elif it.data is None and (it.st is None or stat.S_ISDIR(it.st.st_mode)):
            made.add(it.dest)
    return wanted


def dir_facts(lookup: DirLookup, paths: Iterable[str]) -> dict[str, Any]:
    """The facts of ``paths``: ``{"dirs": {path: [mode, uid, gid, mtime_ns] | None}}``."""
    dirs: dict[str, list[int] | None] = {}
    for rel in paths:
        found = lookup(rel)
        # whole seconds, as a layer keeps them: the same facts from an extracted layer
        # and from the upper directory a step wrote
        dirs[rel] = None if found is None else [found.mode, found.uid, found.gid,
                                                found.mtime_ns - found.mtime_ns % 10**9]
    return {"dirs": dirs}


def valid_dir_facts(facts: dict[str, Any]) -> bool:
    """Facts of :func:`dir_facts` (maybe from another machine's cache) that are safe to
    write by: ids and modes in range."""
    dirs = facts.get("dirs")
    return isinstance(dirs, dict) and all(
        isinstance(k, str) and (v is None or (
            isinstance(v, list) and len(v) == 4 and all(isinstance(i, int) for i in v)
            and 0 <= v[0] <= 0o7777 and 0 <= v[1] < 2**32 and 0 <= v[2] < 2**32))
        for k, v in dirs.items())


def facts_lookup(facts: dict[str, Any], fallback: DirLookup) -> DirLookup:
    """A lookup answering from ``facts``, and from ``fallback`` for any other path."""
    dirs: dict[str, list[int] | None] = facts["dirs"]

    def lookup(rel: str) -> DirStat | None:
        if rel not in dirs:
            return fallback(rel)
        found = dirs[rel]
        return None if found is None else DirStat(*found)
    return lookup


def no_copy_up(rel: str) -> DirStat | None:
    return None  # COPY --link: the stage's directories are not copied up


def stage_lowers(env: StepEnv, state: ImageState) -> Callable[[], list[Path]]:
    """A function, to call from the writer's thread, that returns the stage's extracted
    layers (top first): extracted (or fetched) on the first call only, so a COPY that
    needs none of their files needs none of them."""
    loop = asyncio.get_running_loop()
    lowers: list[list[Path]] = []

    def get() -> list[Path]:
        if not lowers:
            lowers.append(asyncio.run_coroutine_threadsafe(env.lowers(state), loop).result())
        return lowers[0]
    return get


async def copy_up_lookup(env: StepEnv, state: ImageState, items: Sequence[_Written]) -> DirLookup:
    """The stage's directories the COPY copies up, from facts (:mod:`.copyup`) when the
    cache has them, else from its extracted layers (then remembered)."""
    paths = copied_up(items)
    lowers = stage_lowers(env, state)

    def from_layers(rel: str) -> DirStat | None:  # in the writer's thread
        return lowers_lookup(lowers())(rel)

    if not paths:
        return from_layers

    async def compute() -> dict[str, Any]:
        return await asyncio.to_thread(dir_facts, lowers_lookup(await env.lowers(state)), paths)

    facts = await cached_facts(env, state, {"copy-up": paths}, compute, valid_dir_facts)
    return facts_lookup(facts, from_layers)
