"""``RUN``: the command in the sandbox over the stage's layers; its upper dir is the layer.

The process gets the image's env plus the stage's build args (ENV wins), the image's
USER and WORKDIR, ``--network`` (else the CLI's default) and ``--mount``s: bind mounts
of the context or of another stage (``from=``), caches (kept under the build storage,
never in a layer), tmpfs and secrets (``--secret id=..,src=..`` on the CLI; never on disk
inside the sandbox, never in a layer).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..context import hash_path
from ..frontend import Instruction
from ..image import ImageState
from ..sandbox import (
    BindMount,
    Network,
    RootfsMode,
    RunFailed,
    RunSpec,
    SandboxError,
    parse_mount,
    run_step,
)
from .common import BuildError, StepEnv, layer_step
from .metadata import command_form

__all__ = ["run_instruction"]


def _tree_hash(root: Path) -> str:
    import blake3
    h = blake3.blake3()
    if root.is_file():
        h.update(hash_path(root, os.lstat(root)).encode())
        return h.hexdigest()[:32]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            p = Path(dirpath, name)
            h.update(os.fsencode(os.path.relpath(p, root)) + b"\0")
            h.update(hash_path(p, os.lstat(p)).encode())
    return h.hexdigest()[:32]


async def run_instruction(env: StepEnv, state: ImageState, ins: Instruction,
                          args: Mapping[str, str], name: str) -> None:
    """Execute (or reuse from the cache) one RUN instruction."""
    where = env.where(ins)
    if ins.heredocs:
        raise BuildError(where, "RUN with a heredoc is not supported yet; use a script "
                         "file and COPY it")
    argv = command_form(ins, state)
    image_env = list(state.config.env or ())
    names = {e.partition("=")[0] for e in image_env}
    run_env = image_env + [f"{k}={v}" for k, v in sorted(args.items()) if k not in names]
    network = (ins.flag("network") or env.network).lower()
    try:
        net = Network(network)
        mounts = [parse_mount(m) for m in ins.flag_all("mount")]
    except ValueError as exc:
        raise BuildError(where, f"{exc} (--network takes none, host or default)") from exc
    inputs: dict[str, Any] = {"argv": list(argv), "env": run_env,
                              "user": state.config.user or "",
                              "workdir": state.config.working_dir or "/",
                              "network": net.value, "mounts": list(ins.flag_all("mount"))}
    resolved = []
    for i, m in enumerate(mounts):
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

    await layer_step(env, state, ins, name, ins.original, created_by, inputs,
                     produce)


