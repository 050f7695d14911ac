"""The stage graph scheduler: builds the stages a target needs, concurrently where they
do not depend on each other.

The Dockerfile is planned by :func:`builder.dockerfile.stages.plan_build` (ARG/ENV scoping,
expansion, the stage graph, the stages the target needs). Base images are read first,
so that the plan expands variables with the environment they bring. Then every needed
stage runs as one asyncio task, all started together; a stage that needs another
(``FROM <stage>``, ``COPY --from=<stage>``, ``RUN --mount=from=<stage>``) awaits that
stage's task at the point of use, so independent stages overlap and stages the target
does not need never run. Filesystem steps go through
:func:`builder.steps.common.layer_step` (cache, layers, extracted layers); metadata
instructions only change the stage's :class:`ImageState`. A base image's ``ONBUILD``
triggers are the first instructions of the stage that uses it (the plan puts them there,
expanded like the rest); the base's ``OnBuild`` is not inherited further.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Mapping
from pathlib import Path

from cas.errors import StorageFull, full_cause
from registry.oci import Platform

from .base import BaseImage, BaseImageError, resolve_base
from .dockerfile.errors import with_suggestion
from .dockerfile.instructions import (
    Add,
    Arg,
    Copy,
    Env,
    From,
    Run,
    Workdir,
)
from .dockerfile.stages import BuildPlan, Stage, plan_build
from .dockerfile.syntax import SyntaxTree
from .image import ImageState
from .steps.common import BuildError, StepEnv
from .steps.copy import copy_instruction, workdir_instruction
from .steps.history import arg_created_by
from .steps.metadata import METADATA, apply_metadata
from .steps.run import run_instruction

__all__ = ["StageScheduler", "plan"]

_FS = (Run, Copy, Add, Workdir)


def stage_platform(stage: Stage, target: Platform, dockerfile: str) -> Platform:
    """A stage's platform: its ``FROM --platform`` (expanded), else the target's."""
    if not stage.platform:
        return target
    try:
        return Platform.parse(stage.platform)
    except ValueError as exc:
        head = stage.instructions[0]
        raise BuildError(f"{dockerfile}:{head.start_line}: FROM", str(exc)) from exc


async def plan(tree: SyntaxTree, env: StepEnv, build_args: Mapping[str, str],
               target: str | None, platform: Platform | None = None,
               ) -> tuple[BuildPlan, dict[tuple[str, str], BaseImage]]:
    """Plan the build for the target ``platform`` (default: the host's); read the base
    images the needed stages start from, each for its stage's platform."""
    target_p = platform or Platform.host()
    named = env.contexts
    first = plan_build(tree, build_args, target, target_platform=target_p)
    if named:  # --build-context: a replaced stage needs nothing of its own
        first = named.prune(first)

    def wanted_by(p: BuildPlan) -> list[tuple[str, str]]:
        return sorted({(ref, str(stage_platform(s, target_p, env.dockerfile)))
                       for i in p.needed
                       if (ref := (s := p.stages[i]).base_image) and ref.lower() != "scratch"
                       and not (named and named.replaces(s))})

    async def load(ref: str, plat: str) -> BaseImage:
        try:
            if named and (ctx := named.find(ref)) is not None:
                return await named.base(ctx, env.store, plat, env.work)
            if env.remote is not None and env.remote.lazy_bases \
                    and not ref.startswith("oci-layout://"):
                from .cache.lazy import lazy_base

                lazy = await lazy_base(env.remote, ref, plat, pull=env.pull,
                                       progress=env.progress)
                if lazy is not None:
                    return lazy
            return await resolve_base(ref, env.store, plat, pull=env.pull,
                                      progress=env.progress, holds=env.holds)
        except BaseImageError as exc:
            line = next(s.instructions[0].start_line for s in first.stages
                        if s.base_image == ref)
            raise BuildError(f"{env.dockerfile}:{line}: FROM", str(exc)) from exc

    async def load_platforms(ref: str, plats: list[str]) -> list[BaseImage]:
        return [await load(ref, p) for p in plats]

    bases: dict[tuple[str, str], BaseImage] = {}
    current = first
    # A base's ONBUILD triggers may need further stages (COPY --from), whose bases are
    # read in turn: plan again until no stage needs a base not read yet.
    while missing := [w for w in wanted_by(current) if w not in bases]:
        # One platform of a reference at a time: the local image store keeps one
        # platform of a registry reference, so two pulls of it at once could read each
        # other's.
        by_ref: dict[str, list[str]] = {}
        for r, p in missing:
            by_ref.setdefault(r, []).append(p)
        loaded = await asyncio.gather(*(load_platforms(r, ps) for r, ps in by_ref.items()))
        bases.update({(r, p): b for (r, ps), got in zip(by_ref.items(), loaded)
                      for p, b in zip(ps, got)})
        states = {ref: ImageState.from_config(b.config, [], "") for (ref, _), b in bases.items()}
        current = plan_build(tree, build_args, target, target_platform=target_p,
                             image_env={ref: st.env_map() for ref, st in states.items()},
                             image_onbuild={ref: st.config.on_build or ()
                                            for ref, st in states.items()})
        if named:
            current = named.prune(current)
    return current, bases


def _declare(declared: dict[str, str | None], name: str, value: str | None) -> None:
    """Record an ARG for RUN's history: one without a value (``ARG B`` after ``ARG
    B=1``) keeps the value the name has, as BuildKit's history reads the build state."""
    if value is not None or name not in declared:
        declared[name] = value


class StageScheduler:
    def __init__(self, build: BuildPlan, bases: Mapping[tuple[str, str], BaseImage],
                 env: StepEnv, platform: Platform | None = None, prefix: str = "") -> None:
        self.plan = build
        self.prefix = prefix  # a multi-platform build's step names start with the platform
        self.bases = dict(bases)
        self.platform = platform or Platform.host()
        self.env = env
        self._tasks: dict[int, asyncio.Task[ImageState]] = {}
        self._roots: dict[tuple[str, tuple[str, ...]], asyncio.Task[Path]] = {}
        env.stage_root = self.stage_root
        env.stage_key = self.stage_key

    async def run(self) -> ImageState:
        """Build the target stage; return its final state."""
        for i in self.plan.needed:
            self._task(i)
        try:
            return await self._tasks[self.plan.target]
        finally:
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _task(self, index: int) -> asyncio.Task[ImageState]:
        if index not in self._tasks:
            self._tasks[index] = asyncio.create_task(self._stage(self.plan.stages[index]))
        return self._tasks[index]

    def _find(self, ref: str) -> int | None:
        if ref.isdigit() and int(ref) < len(self.plan.stages):
            return int(ref)
        for s in self.plan.stages:
            if s.name and s.name == ref.lower():
                return s.index
        return None

    async def stage_root(self, ref: str, within: tuple[str, ...] = ()) -> Path:
        """A flattened copy of a stage's (or an image's) root filesystem (read-only use);
        with ``within`` (directories or files, relative) maybe only those paths of it."""
        if (ref, ()) in self._roots:
            return await self._roots[ref, ()]
        if (ref, within) not in self._roots:
            self._roots[ref, within] = asyncio.create_task(self._make_root(ref, within))
        return await self._roots[ref, within]

    async def stage_key(self, ref: str) -> str | None:
        """The cache key of the stage ``ref`` names once it is built; None when ``ref``
        is an image or a named context instead."""
        contexts = self.env.contexts
        index = self._find(ref)
        if index is None or (contexts and contexts.find(ref) is not None):
            return None
        return (await self._task(index)).key

    def _reader(self, ref: str) -> str:
        """``Dockerfile:LINE: INSTRUCTION`` of the first instruction that reads ``ref``
        (``COPY --from``, ``RUN --mount=...,from=``)."""
        for i in self.plan.needed:
            for ins in self.plan.stages[i].instructions:
                froms = ([ins.from_] if isinstance(ins, Copy) else
                         [m.from_ for m in ins.mounts or ()] if isinstance(ins, Run) else [])
                if ref in froms:
                    return self.env.where(ins)
        return self.env.dockerfile

    def _not_a_stage(self, ref: str, problem: str) -> str:
        """``problem`` (reading ``ref`` as an image failed), with "did you mean" a stage
        when ``ref`` is a bare name close to one: most likely a misspelt stage."""
        names = [s.name for s in self.plan.stages if s.name]
        if any(c in ref for c in "/:@.") or not names:
            return problem
        hint = with_suggestion("", ref.lower(), names).hint
        return (f"{problem}; no stage is named {ref!r}" + (f" ({hint})" if hint else "")
                + ": name a stage of this Dockerfile, or an image that exists")

    async def _make_root(self, ref: str, within: tuple[str, ...] = ()) -> Path:
        contexts = self.env.contexts
        named = contexts.find(ref) if contexts else None
        if named is not None and named.directory is not None:
            return named.directory  # --build-context NAME=DIR: read in place
        index = self._find(ref)
        plat = str(self.platform)
        try:
            if contexts and named is not None:  # a context named like a stage replaces it
                base = await contexts.base(named, self.env.store, plat, self.env.work)
                state = ImageState.from_config(base.config, list(base.layers), "")
            elif index is not None:
                state = await self._task(index)
            else:
                base = self.bases.get((ref, plat)) or await resolve_base(
                    ref, self.env.store, plat, pull=self.env.pull,
                    progress=self.env.progress, holds=self.env.holds)
                state = ImageState.from_config(base.config, list(base.layers), "")
        except BaseImageError as exc:
            raise BuildError(self._reader(ref), self._not_a_stage(ref, str(exc))) from exc
        from .sandbox.flatten import flatten_lowers, flatten_subtree

        lowers = await self.env.lowers(state)
        dest = self.env.scratch("root-") / "rootfs"
        if not within or not await asyncio.to_thread(flatten_subtree, lowers, dest, within):
            await asyncio.to_thread(flatten_lowers, lowers, dest)
        return dest

    async def _base(self, stage: Stage) -> ImageState:
        contexts = self.env.contexts
        named = contexts.replaces(stage) if contexts else None
        if contexts and named is not None:  # --build-context NAME=... replaces stage NAME
            plat = stage_platform(stage, self.platform, self.env.dockerfile)
            n = self.env.progress.start(f"[context {named.name}] {named.describe()}")
            try:
                base = await contexts.base(named, self.env.store, str(plat), self.env.work)
            except BaseImageError as exc:
                raise BuildError(f"{self.env.dockerfile}:{stage.instructions[0].start_line}: "
                                 "FROM", str(exc)) from exc
            self.env.progress.done(n)
            return ImageState.from_config(base.config, list(base.layers),
                                          f"base:{base.manifest_digest}")
        if stage.base_stage is not None:
            return (await self._task(stage.base_stage)).copy()
        ref = stage.base_image or "scratch"
        plat = stage_platform(stage, self.platform, self.env.dockerfile)
        if ref.lower() == "scratch":
            state = ImageState.scratch()
            state.os, state.architecture = plat.os, plat.architecture
            state.variant = plat.variant or None
            state.key = f"scratch:{plat}"
            return state
        base = self.bases[(ref, str(plat))]
        return ImageState.from_config(base.config, list(base.layers),
                                      f"base:{base.manifest_digest}")

    def _declared_args(self, index: int | None) -> dict[str, str | None]:
        """The build args a stage declared, with those of the stages it is built FROM
        first (BuildKit carries them over): what a RUN's history entry lists."""
        if index is None:
            return {}
        stage = self.plan.stages[index]
        declared = self._declared_args(stage.base_stage)
        for ins in stage.instructions:
            if isinstance(ins, Arg):
                for d in ins.args:
                    _declare(declared, d.name, d.default)
        return declared

    async def _stage(self, stage: Stage) -> ImageState:
        env = self.env
        head = stage.instructions[0]
        assert isinstance(head, From)
        state = await self._base(stage)
        if env.contexts and env.contexts.replaces(stage):
            return state
        body = list(stage.instructions[1:])  # the base's ONBUILD triggers first
        if state.config.on_build:
            state.update(on_build=None)
        total = 1 + sum(1 for i in body if isinstance(i, _FS))
        label = self.prefix + (f"{stage.display_name} " if len(self.plan.stages) > 1 else "")
        n = env.progress.start(f"[{label}1/{total}] FROM {head.image}")
        env.progress.done(n)
        # A stage built FROM another keeps that stage's build args in RUN's environment
        # (BuildKit carries them over; the plan expands with them already).
        args: dict[str, str] = dict(self.plan.stages[stage.base_stage].args) \
            if stage.base_stage is not None else {}
        declared = self._declared_args(stage.base_stage)
        # ARG values given after an ENV of the same name (the base image's included): a
        # RUN sees them over the ENV's until an ENV sets the name again, as in BuildKit.
        arg_env: dict[str, str] = {}
        cmd_set = [False]
        k = 1
        for i, ins in enumerate(body):
            if isinstance(ins, Arg):
                for d in ins.args:
                    if d.default is not None:
                        args[d.name] = arg_env[d.name] = d.default
                    _declare(declared, d.name, d.default)
                state.add_history(arg_created_by((d.name, d.default) for d in ins.args),
                                  "", empty=True)
                continue
            if isinstance(ins, Env):
                for kv in ins.env:
                    arg_env.pop(kv.key, None)
            if isinstance(ins, METADATA):
                # "": timed from the filesystem steps around it when assembled
                apply_metadata(ins, state, env.where(ins), cmd_set, "")
                continue
            k += 1
            name = f"[{label}{k}/{total}] {ins.original or ins.keyword}"
            state.files_later = any(isinstance(later, Run) for later in body[i + 1:])
            try:
                if isinstance(ins, Run):
                    await run_instruction(env, state, ins, args, name, declared, arg_env)
                elif isinstance(ins, (Copy, Add)):
                    await copy_instruction(env, state, ins, name)
                elif isinstance(ins, Workdir):
                    await workdir_instruction(env, state, ins, name)
                else:  # pragma: no cover - every instruction type is handled above
                    raise BuildError(env.where(ins), "unsupported instruction")
            except OSError as exc:
                # StorageFull: the store filled up while taking the step's layer in.
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) \
                        and not isinstance(exc, StorageFull):
                    raise
                raise BuildError(env.where(ins), _out_of_space_message(exc, env.work)) from exc
        return state


def _out_of_space_message(exc: OSError, work: Path) -> str:
    """What to say when a step ran out of disk space (or quota) while writing."""
    what = (exc.cause if isinstance(exc, StorageFull)  # named when it failed
            else "quota exceeded" if exc.errno == errno.EDQUOT else full_cause(work.parent))
    return (f"{what} while writing this step's files (under {work.parent}); free space on "
            "that filesystem or give --storage a directory on a larger one. Nothing was "
            "tagged and nothing partial was kept.")
