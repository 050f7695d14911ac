"""The stage graph scheduler: builds the stages a target needs, concurrently where they
do not depend on each other.

Every needed stage runs as one asyncio task, started together; a stage that needs
another (``FROM <stage>``, ``COPY --from=<stage>``, ``RUN --mount=from=<stage>``) awaits
that stage's task at the point of use, so independent stages overlap and stages the
target does not need never run. Instructions run in order inside a stage; filesystem
steps go through :func:`builder.steps.common.layer_step` (cache, layers, snapshots),
metadata instructions only change the stage's :class:`ImageState`.

Build arguments follow Docker's scoping: ``ARG`` before the first ``FROM`` is visible to
``FROM`` lines only; a stage sees an ARG after declaring it (a bare ``ARG NAME``
inherits the global value); ``--build-arg`` overrides defaults; ENV wins over ARG in
expansion. Base images with ``ONBUILD`` triggers run them first, then drop them.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .base import BaseImageError, resolve_base
from .frontend import Dockerfile, DockerfileError, Instruction, Stage, parse_trigger
from .image import ImageState
from .sandbox.flatten import flatten_lowers
from .shellwords import ExpansionError, process_word
from .steps.common import BuildError, StepEnv
from .steps.copy import copy_instruction, workdir_instruction
from .steps.metadata import METADATA, apply_metadata
from .steps.run import run_instruction

__all__ = ["Executor", "needed_stages"]

_FS = {"RUN", "COPY", "ADD", "WORKDIR"}


def _arg_decl(ins: Instruction) -> list[tuple[str, str | None]]:
    out = []
    for a in ins.args:
        name, eq, default = a.partition("=")
        out.append((name, default if eq else None))
    return out


def _refs(stage: Stage, scope: Mapping[str, str]) -> set[str]:
    refs = set()
    for ins in stage.instructions:
        for f in ins.flag_all("from"):
            refs.add(process_word(f, scope))
        for m in ins.flag_all("mount"):
            for field in m.split(","):
                k, _, v = field.partition("=")
                if k.strip() == "from" and v:
                    refs.add(process_word(v, scope))
    return refs


def needed_stages(df: Dockerfile, target: Stage, scope: Mapping[str, str]) -> list[Stage]:
    """The target and every stage it depends on, transitively, in file order."""
    seen: dict[int, Stage] = {}
    todo = [target]
    while todo:
        s = todo.pop()
        if s.index in seen:
            continue
        seen[s.index] = s
        base = df.stage(process_word(s.base, scope))
        if base is not None and base.index < s.index:
            todo.append(base)
        for ref in _refs(s, scope):
            dep = df.stage(ref)
            if dep is not None:
                todo.append(dep)
    return [seen[i] for i in sorted(seen)]


class Executor:
    def __init__(self, df: Dockerfile, env: StepEnv, *, target: str | None = None,
                 build_args: Mapping[str, str] | None = None) -> None:
        self.df = df
        self.env = env
        self.build_args = dict(build_args or {})
        self.global_scope: dict[str, str] = {}
        for ins in df.global_args:
            for name, default in _arg_decl(ins):
                value = self.build_args.get(name)
                if value is None and default is not None:
                    value = process_word(default, self.global_scope)
                if value is not None:
                    self.global_scope[name] = value
        if target:
            found = df.stage(target)
            if found is None:
                names = ", ".join(s.ref for s in df.stages)
                raise DockerfileError(df.path, 0, f"target stage {target!r} not found "
                                      f"(stages: {names})")
            self.target = found
        else:
            self.target = df.stages[-1]
        self._tasks: dict[int, asyncio.Task[ImageState]] = {}
        self._roots: dict[str, asyncio.Task[Path]] = {}
        env.stage_root = self.stage_root

    async def run(self) -> ImageState:
        """Build the target stage; return its final state."""
        for s in needed_stages(self.df, self.target, self.global_scope):
            self._task(s)
        try:
            return await self._tasks[self.target.index]
        finally:
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _task(self, stage: Stage) -> asyncio.Task[ImageState]:
        if stage.index not in self._tasks:
            self._tasks[stage.index] = asyncio.create_task(self._stage(stage))
        return self._tasks[stage.index]

    async def stage_root(self, ref: str) -> Path:
        """A flattened copy of a stage's (or an image's) root filesystem (read-only use)."""
        if ref not in self._roots:
            self._roots[ref] = asyncio.create_task(self._make_root(ref))
        return await self._roots[ref]

    async def _make_root(self, ref: str) -> Path:
        stage = self.df.stage(ref)
        if stage is not None:
            state = await self._task(stage)
        else:
            try:
                base = await resolve_base(ref, self.env.store)
            except BaseImageError as exc:
                raise BuildError(f"{self.df.path}", str(exc)) from exc
            state = ImageState.from_config(base.config, list(base.layers), "")
        lowers = await self.env.lowers(state)
        dest = self.env.scratch("root-") / "rootfs"
        await asyncio.to_thread(flatten_lowers, lowers, dest)
        return dest

    async def _base(self, stage: Stage) -> ImageState:
        ref = process_word(stage.base, self.global_scope)
        where = f"{self.df.path}:{stage.line}: FROM"
        if ref.lower() == "scratch":
            state = ImageState.scratch()
            state.key = "scratch"
            return state
        dep = self.df.stage(ref)
        if dep is not None and dep.index < stage.index:
            return (await self._task(dep)).copy()
        try:
            base = await resolve_base(ref, self.env.store)
        except BaseImageError as exc:
            raise BuildError(where, str(exc)) from exc
        return ImageState.from_config(base.config, list(base.layers),
                                      f"base:{base.manifest_digest}")

    async def _stage(self, stage: Stage) -> ImageState:
        env = self.env
        label = (stage.name or f"stage-{stage.index}") if len(self.df.stages) > 1 else ""
        state = await self._base(stage)
        instructions = list(stage.instructions)
        triggers = state.config.on_build or ()
        if triggers:
            pre = [replace(parse_trigger(t, self.df.path), line=stage.line) for t in triggers]
            instructions = pre + instructions
            state.update(on_build=None)
        total = 1 + sum(1 for i in instructions if i.keyword in _FS)
        k = 1
        prefix = f"[{label} " if label else "["
        n = env.progress.start(f"{prefix}1/{total}] FROM {process_word(stage.base, self.global_scope)}")
        env.progress.done(n)
        args: dict[str, str] = {}
        cmd_set = [False]
        for ins in instructions:
            where = env.where(ins)
            scope = {**args, **state.env_map()}
            try:
                if ins.keyword == "ARG":
                    for name, default in _arg_decl(ins):
                        if name in self.build_args:
                            args[name] = self.build_args[name]
                        elif default is not None:
                            args[name] = process_word(default, scope)
                        elif name in self.global_scope:
                            args[name] = self.global_scope[name]
                        scope = {**args, **state.env_map()}
                    continue
                if ins.keyword in METADATA:
                    apply_metadata(ins, state, scope, where, cmd_set, env.created)
                    continue
                k += 1
                name = f"{prefix}{k}/{total}] {ins.original}"
                if ins.keyword == "RUN":
                    await run_instruction(env, state, ins, args, name)
                elif ins.keyword in ("COPY", "ADD"):
                    await copy_instruction(env, state, ins, scope, name)
                elif ins.keyword == "WORKDIR":
                    await workdir_instruction(env, state, ins, scope, name)
            except ExpansionError as exc:
                raise BuildError(where, str(exc)) from exc
        return state


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
