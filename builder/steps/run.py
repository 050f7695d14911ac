"""``RUN``: the command in the sandbox over the stage's layers; its upper dir is the layer.

The process gets the image's env plus the stage's build args and proxy args (ENV wins),
the image's USER and WORKDIR, ``--network`` (else the CLI's default) and ``--mount``s:
bind mounts of the context or of another stage or image (``from=``), caches (kept under
the build storage, never in a layer), tmpfs and secrets (``--secret id=..,src=..`` on
the CLI; never on disk inside the sandbox, never in a layer). A heredoc that is the whole
command (``RUN <<EOF``) is the shell's script, as in BuildKit.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import blake3

from ..context import hash_path
from ..image import ImageState
from ..instructions import Run
from ..mounts import Mount as SpecMount
from ..mounts import MountType
from ..sandbox.spec import (
    BindMount,
    CacheMount,
    Network,
    RunSpec,
    SecretMount,
    Sharing,
    TmpfsMount,
)
from ..sandbox.spec import Mount as SandboxMount
from .common import BuildError, StepEnv, instruction_text, layer_step
from .metadata import command_form

__all__ = ["run_instruction"]


def _tree_hash(root: Path) -> str:
    h = blake3.blake3()
    if not root.is_dir():
        h.update(hash_path(root, os.lstat(root)).encode())
        return h.hexdigest()[:32]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            p = Path(dirpath, name)
            h.update(os.fsencode(os.path.relpath(p, root)) + b"\0")
            h.update(hash_path(p, os.lstat(p)).encode())
    return h.hexdigest()[:32]


def _convert(m: SpecMount, where: str) -> SandboxMount:
    target = posixpath.normpath("/" + m.target) if m.target else ""
    if m.type is MountType.BIND:
        return BindMount(target=target, source=posixpath.normpath("/" + m.source),
                         from_ref=m.from_ or None, rw=not m.readonly)
    if m.type is MountType.CACHE:
        return CacheMount(target=target, id=m.id, sharing=Sharing(m.sharing or "shared"),
                          readonly=m.readonly, uid=m.uid or 0, gid=m.gid or 0,
                          mode=0o755 if m.mode is None else m.mode)
    if m.type is MountType.TMPFS:
        return TmpfsMount(target=target, size=m.size)
    if m.type is MountType.SECRET:
        return SecretMount(id=m.id or posixpath.basename(target), target=target or None,
                           env=m.env, required=m.required,
                           mode=0o400 if m.mode is None else m.mode, uid=m.uid or 0,
                           gid=m.gid or 0)
    raise BuildError(where, f"--mount=type={m.type} is not supported by this builder")


def _argv(ins: Run, state: ImageState, where: str) -> tuple[str, ...]:
    if ins.files:
        command = " ".join(ins.command).strip()
        if ins.shell_form and len(ins.files) == 1 and command.startswith("<<"):
            return (*command_form(("",), True, state)[:-1], ins.files[0].data)
        raise BuildError(where, "RUN with heredocs as extra files is not supported; "
                         "put the heredoc first (RUN <<EOF) or COPY a script")
    return command_form(ins.command, ins.shell_form, state)


async def run_instruction(env: StepEnv, state: ImageState, ins: Run,
                          args: Mapping[str, str], name: str) -> None:
    """Execute (or reuse from the cache) one RUN instruction."""
    where = env.where(ins)
    if ins.security == "insecure":
        raise BuildError(where, "RUN --security=insecure is not supported: steps always run "
                         "with Docker's default capabilities")
    argv = _argv(ins, state, where)
    image_env = list(state.config.env or ())
    names = {e.partition("=")[0] for e in image_env}
    extra = {**env.proxy_env, **args}
    run_env = image_env + [f"{k}={v}" for k, v in sorted(extra.items()) if k not in names]
    try:
        net = Network((ins.network or env.network).lower())
    except ValueError:
        raise BuildError(where, f"--network={ins.network}: use none, host or default") from None
    inputs: dict[str, Any] = {"argv": list(argv), "env": run_env,
                              "user": state.config.user or "",
                              "workdir": state.config.working_dir or "/",
                              "network": net.value}
    resolved: list[SandboxMount] = []
    for i, spec in enumerate(ins.mounts or ()):
        m = _convert(spec, where)
        if isinstance(m, BindMount):
            if m.from_ref is None:
                try:
                    src = env.context.resolve(m.source)[0]
                except ValueError as exc:
                    raise BuildError(where, f"--mount source: {exc}") from exc
                root = env.context.root
                inputs[f"bind{i}"] = await asyncio.to_thread(_tree_hash, src.path)
            else:
                assert env.stage_root is not None
                root = await env.stage_root(m.from_ref)
                inputs[f"bind{i}"] = await asyncio.to_thread(
                    _tree_hash, Path(root, m.source.lstrip("/")))
            m = m.resolved(root)
        resolved.append(m)
    created_by = "RUN " + " ".join(argv) + " # buildkit"

    async def produce(n: int) -> Path:
        # The sandbox's runner only when the step runs: a cached RUN never loads it.
        from ..sandbox.errors import RunFailed, SandboxError
        from ..sandbox.rootfs import RootfsMode
        from ..sandbox.runner import run_step

        lowers = await env.lowers(state)
        state_dir = env.scratch("run-")
        spec = RunSpec(argv=argv, env=tuple(run_env), user=state.config.user or "",
                       workdir=state.config.working_dir or "/", network=net,
                       mounts=tuple(resolved), secrets=dict(env.secrets))
        loop = asyncio.get_running_loop()

        def on_output(stream: str, line: str) -> None:
            loop.call_soon_threadsafe(env.progress.log, n, line)

        try:
            result = await asyncio.to_thread(
                run_step, spec, lowers=lowers, state_dir=state_dir,
                cache_dir=env.cache_mounts, on_output=on_output, set_home=True)
        except RunFailed as exc:
            tail = "\n".join(exc.output_tail[-20:])
            raise BuildError(where, f"{' '.join(argv)!r} did not complete successfully: "
                             f"exit code {exc.exit_code}" + (f"\n{tail}" if tail else ""),
                             exit_code=exc.exit_code) from exc
        except SandboxError as exc:
            raise BuildError(where, str(exc)) from exc
        if result.rootfs_mode is not RootfsMode.OVERLAY:
            raise BuildError(where, "overlayfs could not be mounted on the storage directory's "
                             "filesystem; put the storage (--storage) on ext4 or xfs")
        return result.changes

    await layer_step(env, state, ins, name, instruction_text(ins), created_by, inputs,
                     produce)
