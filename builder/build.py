"""One build, end to end: :func:`run_build` (options in, :class:`BuildResult` out).

Storage (``storage_dir``, shared with the CAS)::

    <storage>/                the CAS (cas.Store) — layer blobs, holder cache:<key>
    <storage>/builder/cache.db        the build cache (builder.cache)
    <storage>/builder/snapshots/      extracted layers (builder.extracted)
    <storage>/builder/cache-mounts/   RUN --mount=type=cache directories
    <storage>/builder/tmp/<build>/    this build's scratch space, removed at the end
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cas import Store, StoreConfig, open_store
from registry.oci import Platform

from .annotations import AnnotationError, parse_annotations
from .cache import BuildCache
from .context import SourceTree
from .contexts import NamedContext, NamedContexts
from .dockerfile.errors import DockerfileError
from .dockerfile.syntax import parse
from .extracted import EXTRACTED_DIR, ExtractedLayers
from .ignore import read_ignore_file
from .image import BuiltImage, assemble, timestamp
from .outputs import Output, export, export_name
from .progress import Progress
from .prune import BuildLock
from .publish import push_images, tag_images
from .scheduler import StageScheduler, plan
from .ssh_keys import key_agents
from .steps.common import BuildError, StepEnv

__all__ = ["BuildOptions", "BuildResult", "run_build", "source_date_epoch"]

# datetime's last second (9999-12-31T23:59:59Z): config times must be RFC 3339.
_MAX_EPOCH = 253402300799


@dataclass(frozen=True)
class BuildOptions:
    context: Path
    storage: Path
    dockerfile: Path | None = None
    tags: tuple[str, ...] = ()
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    explain: bool = False
    network: str = "default"
    outputs: tuple[Output, ...] = ()
    secrets: dict[str, Path | bytes] = field(default_factory=dict)  # id -> file or value
    compression: str = "gzip"
    source_date_epoch: int | None = None
    push: bool = False
    platform: str | None = None  # the target platform, os/arch[/variant]; None: the host's
    differ: str = "auto"  # auto | overlay | snapshot
    ssh: dict[str, Path] = field(default_factory=dict)  # --ssh id -> agent socket
    # --ssh id -> private key files, served by an agent started for the build
    ssh_keys: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    allow: frozenset[str] = frozenset()  # --allow entitlements
    pull: bool = False  # --pull: check the registry for newer base images
    # -f -: the Dockerfile's text (read from stdin); ``dockerfile`` is then not read
    dockerfile_text: str | None = None
    annotations: tuple[str, ...] = ()  # --annotation values (builder.annotations)
    add_hosts: tuple[tuple[str, str], ...] = ()  # --add-host (name, ip)
    shm_size: int | None = None  # --shm-size, bytes
    ulimits: tuple[tuple[str, int, int], ...] = ()  # --ulimit (name, soft, hard)
    build_contexts: tuple[NamedContext, ...] = ()  # --build-context


@dataclass(frozen=True)
class BuildResult:
    image: BuiltImage
    cached_steps: tuple[str, ...]
    ran_steps: tuple[str, ...]


def source_date_epoch(flag: int | None, build_args: dict[str, str]) -> int | None:
    """The build's epoch, as BuildKit takes it: ``--source-date-epoch``, else the
    ``SOURCE_DATE_EPOCH`` build arg, else the environment variable (which buildx passes on
    as that build arg); None when none is given (an empty value counts as not given)."""
    if flag is not None:
        where, value = "--source-date-epoch", str(flag)
    elif build_args.get("SOURCE_DATE_EPOCH"):
        where, value = "--build-arg", build_args["SOURCE_DATE_EPOCH"]
    elif os.environ.get("SOURCE_DATE_EPOCH"):
        where, value = "environment variable", os.environ["SOURCE_DATE_EPOCH"]
    else:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > _MAX_EPOCH:
        raise BuildError(f"{where} SOURCE_DATE_EPOCH={value}",
                         "expected a whole number of seconds since 1970-01-01 UTC (such "
                         "as `git log -1 --format=%ct`), at most 253402300799")
    return int(value)


async def run_build(opts: BuildOptions, progress: Progress) -> BuildResult:
    """Build, write the requested outputs, and return the image."""
    dockerfile = opts.dockerfile or opts.context / "Dockerfile"
    if opts.dockerfile_text is not None:
        # named "Dockerfile" in messages, as BuildKit does; only the context's
        # .dockerignore applies (there is no Dockerfile.dockerignore beside stdin)
        text, dockerfile = opts.dockerfile_text, opts.context / "Dockerfile"
    else:
        try:
            text = await asyncio.to_thread(dockerfile.read_text)
        except OSError as exc:
            raise DockerfileError(f"cannot read the Dockerfile: {exc.strerror}",
                                  file=str(dockerfile)) from exc
    tree = parse(text, dockerfile.name)
    if any(out.loads for out in opts.outputs):
        from .engine import ping

        await ping()  # an engine that is not there fails the build before it starts
    sde = source_date_epoch(opts.source_date_epoch, opts.build_args)
    created = timestamp(sde if sde is not None else time.time())
    bdir = opts.storage / "builder"
    (bdir / "tmp").mkdir(parents=True, exist_ok=True)
    # Shared with other builds, exclusive for `pybuild builder prune`: no extracted layer
    # this build uses goes away under it.
    lock = BuildLock(bdir)
    await asyncio.to_thread(lock.acquire, exclusive=False)
    work: Path | None = None
    store: Store | None = None
    cache: BuildCache | None = None
    agents = contextlib.ExitStack()
    try:
        work = Path(tempfile.mkdtemp(prefix="build-", dir=bdir / "tmp"))
        store = await open_store(StoreConfig(opts.storage))
        cache = await asyncio.to_thread(BuildCache, bdir / "cache.db")
        ssh = {**opts.ssh, **await asyncio.to_thread(key_agents, opts.ssh_keys, agents)}
        matcher = await asyncio.to_thread(
            read_ignore_file, opts.context,
            None if opts.dockerfile_text is not None else dockerfile)
        context = SourceTree(opts.context, matcher, hash_store=cache)
        env = StepEnv(store=store, cache=cache, extracted=ExtractedLayers(bdir / EXTRACTED_DIR, store),
                      progress=progress, context=context,
                      work=work, cache_mounts=bdir / "cache-mounts", dockerfile=dockerfile.name,
                      source_date_epoch=sde, compression=opts.compression,
                      no_cache=opts.no_cache, explain=opts.explain, network=opts.network,
                      secrets=opts.secrets, created=created, ssh=ssh,
                      allow=opts.allow, differ=opts.differ, pull=opts.pull,
                      extra_hosts=opts.add_hosts, shm_size=opts.shm_size, ulimits=opts.ulimits,
                      contexts=NamedContexts(opts.build_contexts))
        try:
            platform = Platform.parse(opts.platform) if opts.platform else None
        except ValueError as exc:
            raise BuildError("--platform", str(exc)) from exc
        try:
            notes = parse_annotations(opts.annotations, str(platform or Platform.host()))
        except AnnotationError as exc:
            raise BuildError("--annotation", str(exc)) from exc
        build_plan, bases = await plan(tree, env, opts.build_args, opts.target, platform)
        env.proxy_env = dict(build_plan.proxy_env)
        for name in build_plan.unused_build_args:
            if name == "SOURCE_DATE_EPOCH":  # read by the build itself, as BuildKit does
                continue
            progress.info(f"WARNING: build argument {name!r} was not consumed by any ARG")
        scheduler = StageScheduler(build_plan, bases, env, platform)
        state = await scheduler.run()
        if opts.labels:
            state.update(labels={**(state.config.labels or {}), **opts.labels})
        image = assemble(state, created, pinned=sde is not None,
                         annotations=notes.manifest, descriptor_annotations=notes.descriptor)

        async def rootfs(dest: Path) -> None:
            from .sandbox.flatten import flatten_lowers

            lowers = await env.lowers(state)
            await asyncio.to_thread(flatten_lowers, lowers, dest)

        # -t names; else those of a type=image/registry output (buildx: -t wins over name=)
        images = [o for o in opts.outputs if o.type in ("image", "registry")]
        tags = list(opts.tags) or [n for o in images for n in o.names]
        push = opts.push or any(o.push for o in images)
        for out in opts.outputs:
            if out.type in ("image", "registry", "cacheonly"):
                continue
            n = progress.start(export_name(out))
            await export(out, image, store, list(opts.tags) or list(out.names), rootfs, work)
            progress.done(n)
        if tags:
            n = progress.start("naming " + ", ".join(tags))
            refs = await tag_images(image, store, tags)
            progress.done(n)
            if push:
                n = progress.start("pushing " + ", ".join(refs))
                await push_images(store, refs, progress=progress, step=n)
                progress.done(n)
        progress.result(str(image.digest))
        return BuildResult(image, tuple(progress.cached_names), tuple(progress.ran))
    finally:
        await asyncio.to_thread(agents.close)
        if cache is not None:
            cache.close()
        if store is not None:
            await store.close()
        if work is not None:
            await asyncio.to_thread(shutil.rmtree, work, True)
        lock.release()
