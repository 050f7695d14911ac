"""The background hash of a piece-level push (:class:`cas.assemble.PieceIngest`): the
recipe a commit is expected to name, hashed ahead as its pieces arrive, and where that
hash may start from a committed base's kept SHA-256 state (:mod:`cas.digest_states`).

:func:`resume_from_base` compares the expected recipe with each base's recipe in the
metadata (never with what a client claims) and starts the hash from the last kept state
inside the pieces they share. The commit checks the claim (:mod:`cas.assemble`): a state
changes how long a hash takes, never what any call answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .digest import Digest
from .digest_states import STEP, Sha256, load_state
from .ingest_assembly import Resumed
from .meta import iter_recipe
from .pack_reads import hash_locations

if TYPE_CHECKING:
    from .core import StoreCore
    from .digest import Hasher
    from .meta import Location

__all__ = ["RESUME_BASES", "Prehash", "feed", "resume_from_base"]

#: Bases a resume looks at, in the order the plan names them (a plan may name 64; each
#: costs a metadata read, and the first ones are the client's best guesses).
RESUME_BASES = 8


class Prehash:
    """The background hash of the recipe a commit is expected to name."""

    def __init__(self, recipe: list[tuple[bytes, int]], known: frozenset[bytes],
                 hasher: Hasher, bases: Sequence[Digest] = ()) -> None:
        self.recipe = recipe
        self.known = known
        self.hasher = hasher
        self.bases = list(bases)  # committed blobs the recipe may begin as
        self.resumed: Resumed | None = None  # the hash started from a base's kept state
        self.done = 0  # pieces of ``recipe`` fed to ``hasher`` (or covered by ``resumed``)
        self.skip = 0  # bytes of piece ``done`` already in ``hasher`` (a state inside it)
        self.failed = False  # the hasher is of no use (a read failed half-way)
        self.stop = False
        self.stepping = False  # a step runs on a worker thread now
        self.located: dict[bytes, Location] = {}  # where the pieces of ``known`` are
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


def resume_from_base(core: StoreCore, pre: Prehash) -> int:
    """Start ``pre``'s hash from the last kept state of the base whose first pieces the
    recipe shares, the furthest one; returns that state's offset (0: none kept)."""
    if not isinstance(pre.hasher, Sha256) or pre.done or pre.skip:
        return 0
    best: tuple[int, bytes, list[bytes], Digest] | None = None
    for base in list(dict.fromkeys(pre.bases))[:RESUME_BASES]:
        if base.algorithm != "sha256":
            continue
        row = core.meta.blob(str(base))
        if row is None:
            continue
        shared = 0
        for theirs, mine in zip(iter_recipe(row[1]), pre.recipe, strict=False):  # to the first difference
            if theirs != mine:
                break
            shared += mine[1]
        if shared < STEP or (best is not None and shared // STEP * STEP <= best[0]):
            continue
        found = load_state(core.root, base.encoded, shared)
        if found is not None and (best is None or found[0] > best[0]):
            best = (*found, base)
    if best is None:
        return 0
    offset, state, before, base = best
    done = pos = 0
    while done < len(pre.recipe) and pos + pre.recipe[done][1] <= offset:  # covered whole
        pos += pre.recipe[done][1]
        done += 1
    pre.hasher = Sha256(offset=offset, state=state, before=before)
    pre.done, pre.skip = done, offset - pos
    pre.resumed = Resumed(str(base), offset, pre.recipe[:done + (1 if pre.skip else 0)])
    return offset


def feed(core: StoreCore, hasher: Hasher, locs: list[Location], skip: int = 0) -> None:
    """Feed the pieces at ``locs`` to ``hasher``, but the first ``skip`` bytes of the
    first one (a kept state stands for them)."""
    if skip and locs:
        hasher.update(memoryview(core.load(locs[0]))[skip:])
        locs = locs[1:]
    hash_locations(core, hasher, locs)
