"""``RUN``: the command in the sandbox over the stage's layers; its upper dir is the layer.

The process gets the image's env plus the stage's build args and proxy args (ENV wins),
the image's USER and WORKDIR, ``--network`` (else the CLI's default) and ``--mount``s:
bind mounts of the context or of another stage or image (``from=``), caches (kept under
the build storage, never in a layer), tmpfs and secrets (``--secret id=..,src=..`` on
the CLI; never on disk inside the sandbox, never in a layer) and SSH agents (``--ssh`` on
the CLI). A cache with ``from=`` starts as a copy of that stage's ``source`` directory and,
as in BuildKit, is another cache than the same ``id`` started otherwise.
Heredocs as BuildKit's dockerfile2llb runs them:

- the command is a heredoc and nothing else (``RUN <<EOF``): its body is the script. A
  body starting with ``#!`` becomes the read-only executable ``/dev/pipes/<name>``, run
  by the SHELL (so the kernel honours the shebang); any other body is the SHELL's
  command string. Either way the body is not expanded here;
- anything else (``RUN python3 <<EOF``, ``RUN cat <<A > a && cat <<B > b``): the command
  line, each heredoc's body and its terminator go to the SHELL as one string, and the
  shell does the redirections, the ``<<-`` tab stripping and (unquoted markers) the
  expansion.

``--security=insecure`` needs the ``security.insecure`` entitlement (``--allow``) and
runs with every capability. The changes are captured by overlayfs or by the snapshot
differ (``--differ``). A step for another architecture runs under the emulator registered
for it with binfmt_misc (qemu-user-static, see :mod:`builder.sandbox.emulation`); when it
has to run and none is registered, it fails saying how to install and register one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from registry.oci import Platform

from ..context import Source, SourceTree, filtered_view, hash_path
from ..dockerfile.instructions import Run
from ..dockerfile.syntax import parse_heredoc_marker
from ..image import ImageState
from ..layers.pathres import resolve_under
from ..sandbox.errors import InvalidMount
from ..sandbox.rootfs import RootfsMode
from ..sandbox.spec import BindMount, CacheMount, Network, RunSpec, SandboxMount, SshMount, sandbox_mount
from .common import BuildError, StepEnv, cached_facts, instruction_text, layer_step
from .history import run_args_prefix
from .metadata import command_form, working_dir

if TYPE_CHECKING:
    from ..sandbox.errors import RunFailed

# Architectures a host runs natively besides its own (BuildKit's default emulator-free set).
_NATIVE_EXTRA = {"amd64": {"386"}}
_DIFFERS = {"auto": RootfsMode.AUTO, "overlay": RootfsMode.OVERLAY, "snapshot": RootfsMode.COPY}
# The longest argument or environment entry (with its NUL: 32 pages) execve takes.
_MAX_ARG_STRLEN = 131071

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


def _view_hash(tree: SourceTree, src: Source) -> str:
    """The key of a context directory as its bind mount shows it: without what
    ``.dockerignore`` excludes (the view itself is made only when the step runs)."""
    h = blake3.blake3()
    for rel, path, st in tree.walk(src):
        h.update(os.fsencode(rel) + b"\0")
        h.update(hash_path(path, st).encode())
    return h.hexdigest()[:32]


def _argv(ins: Run, state: ImageState, where: str) -> tuple[tuple[str, ...], dict[str, bytes]]:
    """The command to run, and the ``/dev/pipes`` files it needs (see the docstring)."""
    if not ins.files:
        return command_form(ins.command, ins.shell_form, state), {}
    if not ins.shell_form or len(ins.command) != 1:
        raise BuildError(where, "heredocs need the shell form of RUN")
    command = ins.command[0]
    shell = command_form(("",), True, state)[:-1]
    try:
        only = parse_heredoc_marker(command)
    except ValueError:
        only = None
    if only is not None:
        body = ins.files[0]
        if state.os != "windows" and body.data.startswith("#!"):
            return (*shell, f"/dev/pipes/{body.name}"), {body.name: body.data.encode()}
        return (*shell, body.data), {}
    script = command + "".join(f"\n{f.data}{f.name}" for f in ins.files)
    return (*shell, script), {}


def _foreign(state: ImageState) -> tuple[str, str] | None:
    """``(platform, architecture)`` of a step this host cannot run natively, else None."""
    host = Platform.host()
    arch = state.architecture or host.architecture
    if (state.os or "linux") == host.os and (
            arch == host.architecture or arch in _NATIVE_EXTRA.get(host.architecture, ())):
        return None
    return str(Platform(arch, state.os or "linux", variant=state.variant)), arch


def _check_emulator(state: ImageState, where: str) -> None:
    """A foreign step runs under an emulator registered with binfmt_misc (qemu-user);
    without one it fails, saying how to install and register it."""
    foreign = _foreign(state)
    if foreign is None:
        return
    from ..sandbox.emulation import EmulatorMissing, check_emulator

    platform, arch = foreign
    if platform.split("/")[0] != Platform.host().os:
        raise BuildError(where, f"cannot run a {platform} command on this "
                         f"{Platform.host()} host")
    try:
        check_emulator(platform, arch)
    except EmulatorMissing as exc:
        raise BuildError(where, str(exc)) from None


async def _settle(job: asyncio.Future[Any]) -> None:
    """Wait until ``job`` is done, through further cancellations (the build cancels every
    stage when it stops); its outcome is dropped."""
    while not job.done():
        try:
            await asyncio.wait([job])
        except asyncio.CancelledError:
            continue
    if not job.cancelled():
        job.exception()


def _bind_within(m: BindMount | CacheMount) -> tuple[str, ...]:
    """What of the stage a bind mount's ``source`` needs flattened: that path (a link on
    its way makes it the whole root), or everything."""
    source = m.source.strip("/")
    return (source,) if source and source != "." else ()


async def _source_hash(root: Path, m: BindMount | CacheMount, where: str) -> str:
    """The hash of what a ``from=`` mount's ``source`` names in the stage's ``root``;
    BuildError when the stage has nothing there."""
    try:
        return await asyncio.to_thread(_tree_hash, resolve_under(root, m.source))
    except FileNotFoundError:
        raise BuildError(where, f"--mount from={m.from_ref}: source {m.source} does not "
                         f"exist in {m.from_ref}; name a path it has") from None


def _bind_hash(env: StepEnv, m: BindMount | CacheMount,
               where: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def compute() -> dict[str, Any]:
        assert env.stage_root is not None and m.from_ref is not None
        root = await env.stage_root(m.from_ref, _bind_within(m))
        return {"hash": await _source_hash(root, m, where)}
    return compute


def _valid_hash(facts: dict[str, Any]) -> bool:
    return isinstance(facts.get("hash"), str)


async def _seeded_cache(env: StepEnv, state: ImageState, m: CacheMount,
                        where: str) -> CacheMount:
    """A cache mount with ``from=``: its identity gets the hash of the directory it starts
    from (BuildKit keys such a cache by its id and its source), from the stage's cached
    facts when the stage is in the cache."""
    assert m.from_ref is not None
    source_key = await env.stage_key(m.from_ref) if env.stage_key else None
    if source_key is not None:
        digest = (await cached_facts(env, state, {"bind": m.source, "from": source_key},
                                     _bind_hash(env, m, where), _valid_hash))["hash"]
    else:
        assert env.stage_root is not None
        root = await env.stage_root(m.from_ref, _bind_within(m))
        digest = await _source_hash(root, m, where)
    return replace(m, base=f"from={m.from_ref},source={m.source} {digest[:16]}")


async def _seed(env: StepEnv, m: CacheMount, where: str) -> CacheMount:
    """``m`` with ``seed``: the host directory a new cache of it starts as a copy of."""
    assert env.stage_root is not None and m.from_ref is not None
    root = await env.stage_root(m.from_ref, _bind_within(m))
    seed = resolve_under(root, m.source)
    if not await asyncio.to_thread(seed.is_dir):
        raise BuildError(where, f"--mount=type=cache,from={m.from_ref}: source {m.source} is "
                         f"not a directory in {m.from_ref}; name a directory of it")
    return replace(m, seed=seed)


async def _restore_caches(env: StepEnv, n: int, caches: list[CacheMount]) -> None:
    """Restore imported cache mounts this runner lacks (``cache-mounts=true``); one that
    cannot be had is a warning: the step runs with an empty cache."""
    from ..cache.lazy import LazyLayerError

    assert env.mounts is not None
    try:
        for cache_id in await env.mounts.restore(caches, env.cache_mounts, env.work):
            env.progress.log(n, f"restored cache mount {cache_id!r} from "
                             f"{env.mounts.imported[cache_id][0]}")
    except LazyLayerError as exc:
        env.progress.info(f"WARNING: {exc}; the step runs with an empty cache")


async def run_instruction(env: StepEnv, state: ImageState, ins: Run,
                          args: Mapping[str, str], name: str,
                          declared: Mapping[str, str | None] | None = None,
                          arg_env: Mapping[str, str] | None = None) -> None:
    """Execute (or reuse from the cache) one RUN instruction; ``declared`` are the build
    args the stage declared (its history entry lists them, as BuildKit's does),
    ``arg_env`` those given after an ENV of the same name, whose values the RUN sees."""
    where = env.where(ins)
    insecure = ins.security == "insecure"
    if insecure and "security.insecure" not in env.allow:
        raise BuildError(where, "RUN --security=insecure: entitlement security.insecure is "
                         "not allowed; grant it with --allow security.insecure")
    argv, pipes = _argv(ins, state, where)
    over = arg_env or {}
    # One entry a name, as BuildKit's exec env has it: an image's "NAME" without "=" is
    # NAME set empty, a name given twice keeps its first place and its last value.
    image_env = [f"{k}={over.get(k, v)}" for k, v in state.env_map().items()]
    names = {e.partition("=")[0] for e in image_env}
    extra = {**env.proxy_env, **args}
    run_env = image_env + [f"{k}={v}" for k, v in sorted(extra.items()) if k not in names]
    if "" in names:  # runc refuses such an environment too
        blank = next(e for e in image_env if e.startswith("="))
        raise BuildError(where, f"environment variable name can't be empty: {blank!r} (an ENV "
                         "whose name expanded to nothing, here or in the base image); "
                         "name the variable")
    for kind, texts in (("the command", argv), ("an environment variable", run_env)):
        longest = max((len(t.encode("utf-8", "surrogatepass")) for t in texts), default=0)
        if longest > _MAX_ARG_STRLEN:  # execve refuses it (E2BIG), as runc's would
            raise BuildError(where, f"{kind} is {longest} bytes, more than Linux lets one "
                             f"argument or variable of a process hold ({_MAX_ARG_STRLEN}); "
                             "put the long text in a file (COPY, or a heredoc) and read it")
    try:
        net = Network((ins.network or env.network).lower())
    except ValueError:
        raise BuildError(where, f"--network={ins.network}: use none, host or default") from None
    inputs: dict[str, Any] = {"argv": list(argv), "env": run_env,
                              "user": state.config.user or "",
                              "workdir": working_dir(state),
                              "network": net.value}
    resolved: list[SandboxMount] = []
    views: dict[int, Source] = {}  # resolved[i] shows this context directory, filtered
    for i, spec in enumerate(ins.mounts or ()):
        try:
            m = sandbox_mount(spec, working_dir(state))
        except InvalidMount as exc:
            raise BuildError(where, exc.why) from None
        if isinstance(m, BindMount):
            if m.from_ref is None:
                try:
                    src = env.context.resolve(m.source)[0]
                except ValueError as exc:
                    raise BuildError(where, f"--mount source: {exc}") from exc
                if src.is_dir and env.context.matcher.patterns:
                    # what .dockerignore excludes is not there, as in BuildKit's context
                    inputs[f"bind{i}"] = await asyncio.to_thread(_view_hash, env.context, src)
                    views[len(resolved)] = src
                    resolved.append(replace(m, source="/"))
                    continue
                root = env.context.root
                inputs[f"bind{i}"] = await asyncio.to_thread(_tree_hash, src.path)
            else:
                # another stage of this build: the hash is a fact of its key, so a hit
                # needs none of its layers; the mount is resolved when the step runs
                source_key = await env.stage_key(m.from_ref) if env.stage_key else None
                if source_key is not None:
                    inputs[f"bind{i}"] = (await cached_facts(
                        env, state, {"bind": m.source, "from": source_key},
                        _bind_hash(env, m, where), _valid_hash))["hash"]
                    resolved.append(m)
                    continue
                assert env.stage_root is not None
                root = await env.stage_root(m.from_ref, _bind_within(m))
                inputs[f"bind{i}"] = await _source_hash(root, m, where)
            m = m.resolved(root)
        elif isinstance(m, SshMount):
            m = m.resolved(env.ssh.get(m.id))
            # As BuildKit: a missing agent fails only a mount marked required=true; any
            # other such mount is left out (and pybuild says so, BuildKit does not).
            if m.socket is None and m.required:
                raise BuildError(where, f"--mount=type=ssh,required=true: no SSH agent "
                                 f"{m.id!r} was forwarded; pass --ssh {m.id}[=SOCKET] to "
                                 "pybuild build")
            if m.socket is None:
                env.progress.info(f"WARNING: {where}: --mount=type=ssh left out: no SSH "
                                  f"agent {m.id!r} was forwarded (pass --ssh {m.id}[=SOCKET])")
            inputs[f"ssh{i}"] = m.id  # the agent's keys are not part of the cache key
        elif isinstance(m, CacheMount) and m.from_ref is not None:
            m = await _seeded_cache(env, state, m, where)
            inputs[f"cache{i}"] = m.base
        resolved.append(m)
    if pipes:
        inputs["pipes"] = {k: blake3.blake3(v).hexdigest()[:32] for k, v in pipes.items()}
    if insecure:
        inputs["security"] = "insecure"
    # as BuildKit's ExecOp meta: part of the step's key, only when given
    if env.extra_hosts:
        inputs["hosts"] = [list(h) for h in env.extra_hosts]
    if env.shm_size:
        inputs["shm"] = env.shm_size
    if env.ulimits:
        inputs["ulimits"] = [list(u) for u in env.ulimits]
    try:
        rootfs = _DIFFERS[env.differ]
    except KeyError:
        raise BuildError(where, f"--differ={env.differ}: use auto, overlay or snapshot") from None
    created_by = ("RUN " + run_args_prefix(declared or {}, image_env) + " ".join(argv)
                  + " # buildkit")

    caches = [m for m in resolved if isinstance(m, CacheMount)]
    if env.mounts is not None:
        env.mounts.used.update(m.cache_id for m in caches)

    async def produce(n: int) -> Path:
        _check_emulator(state, where)
        if env.mounts is not None and caches:
            await _restore_caches(env, n, caches)
        env.warm_sandbox()
        lowers = await env.lowers(state, lazy=True)
        state_dir = env.scratch("run-")
        mounts = []
        for i, m in enumerate(resolved):
            if i in views:
                assert isinstance(m, BindMount)
                m = m.resolved(await asyncio.to_thread(filtered_view, env.context, views[i],
                                                       env.scratch("bind-") / "view"))
            elif isinstance(m, BindMount) and m.root is None and m.from_ref is not None:
                assert env.stage_root is not None
                m = m.resolved(await env.stage_root(m.from_ref, _bind_within(m)))
            elif isinstance(m, CacheMount) and m.from_ref is not None:
                m = await _seed(env, m, where)
            mounts.append(m)
        spec = RunSpec(argv=argv, env=tuple(run_env), user=state.config.user or "",
                       workdir=working_dir(state), network=net,
                       mounts=tuple(mounts), secrets=dict(env.secrets), pipes=pipes,
                       insecure=insecure, extra_hosts=env.extra_hosts)
        loop = asyncio.get_running_loop()

        def on_output(stream: str, line: str) -> None:
            loop.call_soon_threadsafe(env.progress.log, n, line)

        async with env.run_slots or contextlib.nullcontext():
            return await run(n, lowers, state_dir, spec, on_output)

    async def run(n: int, lowers: list[Path], state_dir: Path, spec: RunSpec,
                  on_output: Callable[[str, str], None]) -> Path:
        # The sandbox's runner only when the step runs: a cached RUN never loads it.
        from ..layers.errors import LayerError
        from ..sandbox.errors import RunFailed, SandboxError, SandboxUnavailable
        from ..sandbox.process import StepInterrupt
        from ..sandbox.runner import run_step

        stop = StepInterrupt()
        job = asyncio.ensure_future(asyncio.to_thread(
            run_step, spec, lowers=lowers, state_dir=state_dir, rootfs=rootfs,
            cache_dir=env.cache_mounts, on_output=on_output, set_home=True,
            as_upper=True, interrupt=stop, shm_size=env.shm_size, rlimits=env.ulimits))
        try:
            result = await asyncio.shield(job)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: kill the step's processes, and let run_step
            # clean up its mounts and scratch before the build removes its work dir.
            stop.interrupt()
            await _settle(job)
            raise
        except RunFailed as exc:
            tail = "\n".join(exc.output_tail[-20:])
            raise BuildError(where, f"{' '.join(argv)!r} did not complete successfully: "
                             f"exit code {exc.exit_code}" + (f"\n{tail}" if tail else "")
                             + _missing_program(exc, ins.shell_form) + _no_devices_here(exc),
                             exit_code=exc.exit_code) from exc
        except SandboxUnavailable as exc:
            if rootfs is RootfsMode.OVERLAY and "overlay" in str(exc):
                raise BuildError(where, "--differ overlay: overlayfs cannot be mounted on the "
                                 "storage directory's filesystem; use --differ auto or "
                                 "--differ snapshot (or put --storage on ext4 or xfs)") from exc
            raise BuildError(where, str(exc)) from exc
        except (SandboxError, LayerError) as exc:  # LayerError: writing the step's changes
            raise BuildError(where, str(exc)) from exc
        return result.changes

    await layer_step(env, state, ins, name, instruction_text(ins), created_by, inputs,
                     produce)


_NOT_FOUND = re.compile(r"^bwrap: execvp (.+): No such file or directory$")


def _missing_program(exc: RunFailed, shell_form: bool) -> str:
    """The fix for a step whose program is not in the image (the sandbox could not start
    it: exit code 127 and its own line saying so), else nothing."""
    last = exc.output_tail[-1] if exc.output_tail else ""
    found = _NOT_FOUND.match(last) if exc.exit_code == 127 else None
    if found is None:
        return ""
    program = found.group(1)
    how = ("the shell form of RUN runs it (a FROM scratch image has no shell): use a base "
           "image that has it, name another shell with SHELL, or use the exec form, "
           'RUN ["/path/to/program", "arg"]') if shell_form else \
        "use a base image that has it, or name a program the image has"
    return f"\n{program} does not exist in the image: {how}"


_MKNOD_REFUSED = re.compile(r"\bmknod\b.*(Operation not permitted|Permission denied)")


def _no_devices_here(exc: RunFailed) -> str:
    """Why ``mknod`` failed in a non-root build (its user namespace cannot make device
    nodes, as under rootless BuildKit) and what to do, else nothing."""
    from ..sandbox.userns import in_user_namespace

    if not in_user_namespace() or not any(map(_MKNOD_REFUSED.search, exc.output_tail)):
        return ""
    return ("\na non-root build runs in a user namespace, where device nodes cannot be "
            "created (as under rootless BuildKit): build as root, or leave the device to "
            "the container runtime, which provides /dev (docs/rootless.md)")
