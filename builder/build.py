"""One build, end to end: :func:`run_build` (options in, :class:`BuildResult` out).

Storage (``storage_dir``, shared with the CAS)::

    <storage>/                the CAS (cas.Store) — layer blobs, holder cache:<key>
    <storage>/builder/cache.db        the build cache (builder.cache)
    <storage>/builder/snapshots/      extracted layers (builder.extracted)
    <storage>/builder/cache-mounts/   RUN --mount=type=cache directories
    <storage>/builder/gc-state        the build cache's last measured size (builder.autogc)
    <storage>/builder/tmp/<build>/    this build's scratch space, removed at the end
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from cas import Digest, Store, StoreConfig, check_owner, open_store
from registry.oci import Platform

from .annotations import AnnotationError, parse_annotations
from .autogc import after_build
from .cache import BuildCache
from .cache.lazy import LazyLayerError, MountSources, RemoteLayers
from .cache.manifest import INLINE_KEY
from .cache.remote import (
    CacheSpec,
    CacheSpecError,
    TrackingCache,
    export_all,
    import_all,
    inline_manifest,
    report_hits,
)
from .context import SourceTree
from .contexts import NamedContext, NamedContexts
from .dockerfile.errors import DockerfileError
from .dockerfile.stages import plan_build
from .dockerfile.syntax import SyntaxTree, parse
from .extracted import EXTRACTED_DIR, ExtractedLayers
from .ignore import read_ignore_file
from .image import BuiltImage, BuiltIndex, ImageState, assemble, assemble_index, timestamp
from .outputs import ExportError, Output, export, export_name
from .progress import BuildProgress
from .prune import BuildLock, drop_orphaned_work_dirs, new_work_dir
from .publish import push_images, tag_images
from .scheduler import StageScheduler, plan
from .ssh_keys import key_agents
from .steps.clamp import clamped_states
from .steps.common import BuildError, StepEnv

__all__ = ["BuildOptions", "BuildResult", "platform_dir", "run_build", "source_date_epoch",
           "target_platforms"]

T = TypeVar("T")
_ONE_PLATFORM = ("a Docker engine (--load) and a type=docker archive hold one platform's "
                 "image, not an index: build one platform for them, or write type=oci, "
                 "or push with --push")

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
    gc_keep_storage: int | None = None  # builder.autogc's bound: None its default, 0 off
    network: str = "default"
    outputs: tuple[Output, ...] = ()
    secrets: dict[str, Path | bytes] = field(default_factory=dict)  # id -> file or value
    compression: str = "gzip"
    # as given: the option's text is checked by source_date_epoch, as the other forms are
    source_date_epoch: int | str | None = None
    push: bool = False
    # the target platforms, os/arch[/variant] separated by commas (two or more: an image
    # index); None: the host's
    platform: str | None = None
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
    cache_to: tuple[CacheSpec, ...] = ()  # --cache-to (builder.cache.remote)
    cache_from: tuple[CacheSpec, ...] = ()  # --cache-from


@dataclass(frozen=True)
class BuildResult:
    image: BuiltImage  # a multi-platform build: the first platform's image
    cached_steps: tuple[str, ...]
    ran_steps: tuple[str, ...]
    index: BuiltIndex | None = None  # a multi-platform build's image index
    cache_keys: frozenset[str] = frozenset()  # the build cache entries looked up or recorded

    @property
    def digest(self) -> Digest:
        """What the build made: the index's digest, else the image manifest's."""
        return self.index.digest if self.index is not None else self.image.digest


def target_platforms(text: str | None) -> list[Platform | None]:
    """``--platform`` as buildx reads it: platforms separated by commas, each parsed and
    normalised (``local`` is this host's), duplicates dropped; ``[None]`` (the host's)
    when none is given."""
    if not text:
        return [None]
    out: list[Platform | None] = []
    for part in text.split(","):
        try:
            platform = Platform.host() if part.strip().lower() == "local" else \
                Platform.parse(part)
        except ValueError as exc:
            raise BuildError("--platform", str(exc)) from exc
        if platform not in out:
            out.append(platform)
    return out


async def _all(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``jobs`` concurrently; the first failure cancels the others and is raised
    (as one error, not a group: the CLI prints it as one line)."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    failed: BaseException | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t.exception() for t in tasks
                       if t in done and not t.cancelled() and t.exception()), None)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failed is not None:
        raise failed
    return [t.result() for t in tasks]


def platform_dir(platform: Platform) -> str:
    """A platform's directory in a multi-platform ``type=local``/``tar`` output, as buildx
    names it (``linux_arm64``, ``linux_arm_v7``)."""
    return str(platform).replace("/", "_")


def _check_merge(roots: list[tuple[Platform, list[Path]]], work: Path) -> None:
    """``platform-split=false``: the platforms' files go into one directory, which BuildKit
    refuses when two write the same path (only directories may be shared)."""
    from .sandbox.flatten import flatten_lowers

    seen: dict[str, Platform] = {}
    for i, (platform, lowers) in enumerate(roots):
        tree = work / f"merge-{i}"
        try:
            flatten_lowers(lowers, tree)
            for top, dirs, files in os.walk(tree):
                for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                    path = os.path.relpath(os.path.join(top, name), tree)
                    if path in seen:
                        raise ExportError(f"platform-split=false: cannot overwrite /{path} "
                                          f"from {seen[path]} with {platform}: give each "
                                          "platform's files their own names, or leave "
                                          "platform-split out (one directory per platform)")
                    seen[path] = platform
        finally:
            shutil.rmtree(tree, ignore_errors=True)


def source_date_epoch(flag: int | str | None, build_args: dict[str, str],
                      tree: SyntaxTree | None = None, target: str | None = None) -> int | None:
    """The build's epoch, as BuildKit takes it: ``--source-date-epoch``, else the
    ``SOURCE_DATE_EPOCH`` build arg, else the environment variable (which buildx passes on
    as that build arg), else the default of a global ``ARG SOURCE_DATE_EPOCH=...`` in
    ``tree`` (Dockerfile 1.23); None when none is given (an empty value counts as not given)."""
    if flag is not None:
        where, value = "--source-date-epoch", str(flag)
    elif build_args.get("SOURCE_DATE_EPOCH"):
        where, value = "--build-arg", build_args["SOURCE_DATE_EPOCH"]
    elif os.environ.get("SOURCE_DATE_EPOCH"):
        where, value = "environment variable", os.environ["SOURCE_DATE_EPOCH"]
    elif tree is not None and (value := plan_build(tree, build_args, target)
                               .global_args.get("SOURCE_DATE_EPOCH", "")):
        where = f"{tree.file}: ARG"
    else:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > _MAX_EPOCH:
        raise BuildError(f"{where} SOURCE_DATE_EPOCH={value}",
                         "expected a whole number of seconds since 1970-01-01 UTC (such "
                         "as `git log -1 --format=%ct`), at most 253402300799")
    return int(value)


async def _push_lazy(remote: RemoteLayers, result: BuiltImage | BuiltIndex, tags: list[str],
                     progress: BuildProgress, lazy: int) -> None:
    """``--push`` of an image with layers that stayed in a remote cache: straight to the
    registries (those layers mounted or streamed from their cache), not through the
    local image store, which holds only images whose every blob is here."""
    from registry.client.errors import ClientError
    from registry.client.refs import InvalidReference, parse_image_ref
    from registry.errors import RegistryError

    from .publish import PublishError
    from .transfer_view import TransferView, transfer_totals

    try:
        refs = [str(parse_image_ref(t)) for t in tags]
    except InvalidReference as exc:
        raise PublishError(f"-t: {exc}") from exc
    n = progress.start("pushing " + ", ".join(refs))
    view = TransferView(progress, n)
    try:
        await remote.push_image(result, refs, view)
    except (RegistryError, ClientError, OSError, LazyLayerError) as exc:
        raise PublishError(f"pushing {', '.join(refs)}: {exc}") from exc
    progress.log(n, transfer_totals(", ".join(refs), view.summary()))
    progress.done(n)
    progress.info(f"{', '.join(refs)}: not stored in the local image store: {lazy} of its "
                  "layers stayed in the remote build cache (pybuild pull fetches them)")


def lowercase_fallback(dockerfile: Path) -> Path:
    """The file to read for ``dockerfile``: as the docker CLI and BuildKit (moby/moby#10858),
    a ``Dockerfile`` that is not there is read from ``dockerfile`` beside it when that
    exists (messages and ``Dockerfile.dockerignore`` keep the name ``Dockerfile``)."""
    if dockerfile.name == "Dockerfile" and not dockerfile.exists():
        lower = dockerfile.with_name("dockerfile")
        if lower.is_file():
            return lower
    return dockerfile


# The images of Docker's own Dockerfile front end: what pybuild's front end implements.
_DOCKERFILE_FRONTENDS = ("docker/dockerfile", "docker/dockerfile-upstream")


def _warn_of_parse(tree: SyntaxTree, name: str, progress: BuildProgress) -> None:
    """The parser's warnings (as BuildKit prints them), and a ``# syntax=`` naming a front
    end other than Docker's Dockerfile one: BuildKit would run that image instead."""
    for d in tree.directives:
        if d.name != "syntax":
            continue
        image = d.value.partition("@")[0].removeprefix("docker.io/")
        repo, _, tag = image.rpartition(":")
        if not repo or "/" in tag:  # no tag (that ':' is a registry's port)
            repo = image
        if repo not in _DOCKERFILE_FRONTENDS:
            progress.info(f"WARNING: {name}:{d.line}: # syntax={d.value} names a front end "
                          "pybuild does not run; pybuild builds the file with its own "
                          "Dockerfile front end")
    for w in tree.warnings:
        progress.info(f"WARNING: {name}:{w.line}: {w.message}")


async def run_build(opts: BuildOptions, progress: BuildProgress) -> BuildResult:
    """Build, write the requested outputs, and return the image."""
    dockerfile = opts.dockerfile or opts.context / "Dockerfile"
    if opts.dockerfile_text is not None:
        # named "Dockerfile" in messages, as BuildKit does; only the context's
        # .dockerignore applies (there is no Dockerfile.dockerignore beside stdin)
        text, dockerfile = opts.dockerfile_text, opts.context / "Dockerfile"
    else:
        try:
            # Bytes that are not UTF-8 (a comment saved as Latin-1) read as U+FFFD, as
            # BuildKit's JSON config shows them, rather than failing the build.
            raw = await asyncio.to_thread(lowercase_fallback(dockerfile).read_bytes)
            text = raw.decode("utf-8", "replace")
        except OSError as exc:
            raise DockerfileError(f"cannot read the Dockerfile: {exc.strerror}",
                                  file=str(dockerfile)) from exc
    tree = parse(text, dockerfile.name)
    _warn_of_parse(tree, dockerfile.name, progress)
    platforms = target_platforms(opts.platform)
    if len(platforms) > 1:
        for out in opts.outputs:
            if out.type == "docker":
                raise BuildError("--platform", f"{opts.platform}: {_ONE_PLATFORM}")
    if any(out.loads for out in opts.outputs):
        from .engine import ping

        await ping()  # an engine that is not there fails the build before it starts
    sde = source_date_epoch(opts.source_date_epoch, opts.build_args, tree, opts.target)
    # the stages' ARG SOURCE_DATE_EPOCH see the epoch however it was given, as with buildx
    build_args = {**opts.build_args, **({"SOURCE_DATE_EPOCH": str(sde)} if sde is not None else {})}
    created = timestamp(sde if sde is not None else time.time())
    bdir = opts.storage / "builder"
    await asyncio.to_thread(check_owner, opts.storage)
    (bdir / "tmp").mkdir(parents=True, exist_ok=True)
    # Shared with other builds, exclusive for `pybuild builder prune`: no extracted layer
    # this build uses goes away under it.
    lock = BuildLock(bdir)
    await asyncio.to_thread(lock.acquire, exclusive=False)
    work: Path | None = None
    since = time.time()  # what was used since (by the file system's clock) the GC spares
    store: Store | None = None
    cache: BuildCache | None = None
    remote: RemoteLayers | None = None
    agents = contextlib.ExitStack()
    holds = contextlib.AsyncExitStack()  # StepEnv.holds
    env_ref: list[StepEnv] = []  # for the cleanup of its background work
    try:
        await asyncio.to_thread(drop_orphaned_work_dirs, bdir / "tmp")  # killed builds'
        fresh, owner = await asyncio.to_thread(new_work_dir, bdir / "tmp")
        work, since = fresh, os.stat(fresh / ".owner").st_mtime
        store = await open_store(StoreConfig(opts.storage))
        cache = await asyncio.to_thread(BuildCache, bdir / "cache.db")
        ssh = {**opts.ssh, **await asyncio.to_thread(key_agents, opts.ssh_keys, agents)}
        matcher = await asyncio.to_thread(
            read_ignore_file, opts.context,
            None if opts.dockerfile_text is not None else dockerfile)
        context = SourceTree(opts.context, matcher, hash_store=cache)
        tracking = TrackingCache(cache)
        remote = RemoteLayers(store, tracking)
        remote.lazy_bases = bool(opts.cache_from)  # a fresh CI runner: bases stay remote too
        mounts = MountSources(remote)
        await import_all(opts.cache_from, tracking, store, progress, mounts)
        env = StepEnv(store=store, cache=tracking,
                      extracted=ExtractedLayers(bdir / EXTRACTED_DIR, store, remote.fetch,
                                                remote.stream, progress.info),
                      remote=remote, mounts=mounts, progress=progress, context=context,
                      work=work, cache_mounts=bdir / "cache-mounts", dockerfile=dockerfile.name,
                      source_date_epoch=sde, compression=opts.compression,
                      no_cache=opts.no_cache, explain=opts.explain, network=opts.network,
                      secrets=opts.secrets, created=created, ssh=ssh,
                      allow=opts.allow, differ=opts.differ, pull=opts.pull,
                      extra_hosts=opts.add_hosts, shm_size=opts.shm_size, ulimits=opts.ulimits,
                      contexts=NamedContexts(opts.build_contexts), holds=holds)
        if opts.cache_from:
            from .lazyfs.layers import LazyMounts
            from .sandbox.userns import overlay_xattr

            env.lazyfs = LazyMounts(remote, work / "lazy", progress, overlay_xattr("opaque"))
        env_ref.append(env)
        multi = len(platforms) > 1
        notes = []
        for platform in platforms:
            try:
                notes.append(parse_annotations(opts.annotations, str(platform or Platform.host()),
                                               index=multi))
            except AnnotationError as exc:
                raise BuildError("--annotation", str(exc)) from exc
        if multi:
            # Emulated steps are CPU-bound: one running process per core across platforms.
            env.run_slots = asyncio.Semaphore(max(1, len(os.sched_getaffinity(0))))

        # The plans one after another: a registry base is kept in the local image store
        # for one platform at a time, so each platform reads its own before the next.
        plans = []
        for platform in platforms:
            # One env per platform (its stage roots and proxy args), sharing the steps
            # in flight: a step the same in two platforms (same parent and expanded
            # instruction, as in a FROM --platform=$BUILDPLATFORM stage) runs once.
            penv = replace(env) if multi else env
            build_plan, bases = await plan(tree, penv, build_args, opts.target, platform)
            penv.proxy_env = dict(build_plan.proxy_env)
            prefix = f"{platform} " if multi else ""
            plans.append((StageScheduler(build_plan, bases, penv, platform, prefix), penv))
        for name in plans[0][0].plan.unused_build_args:
            if name == "SOURCE_DATE_EPOCH":  # read by the build itself, as BuildKit does
                continue
            progress.info(f"WARNING: build argument {name!r} was not consumed by any ARG")

        async def build_for(scheduler: StageScheduler, penv: StepEnv) -> tuple[ImageState,
                                                                             StepEnv]:
            try:
                state = await scheduler.run()
            except BuildError as exc:
                # several platforms: the error says which one failed, as BuildKit's step
                # name does (`[linux/arm64 2/2] RUN ...`), also where only it is shown (-q)
                # (once: a step two platforms share fails in both)
                if multi and not any(str(p) in str(exc) for p in platforms):
                    exc.args = (f"[{scheduler.platform}] {exc}",)
                raise
            if opts.labels:
                state.update(labels={**(state.config.labels or {}), **opts.labels})
            return state, penv

        try:
            built = await _all(build_for(sch, penv) for sch, penv in plans)
            # the image's layers, with the epoch's times (the cache keeps the files' own)
            finals = [state for state, _ in built] if sde is None else \
                await clamped_states(env, [state for state, _ in built], sde)
        except LazyLayerError as exc:
            raise BuildError("--cache-from", str(exc)) from exc
        inline = any(spec.type == "inline" for spec in opts.cache_to)
        made = [assemble(state, created, pinned=sde is not None, annotations=note.manifest,
                         descriptor_annotations=note.descriptor,
                         config_fields={INLINE_KEY: inline_manifest(tracking, state.key, sde)
                                        .to_doc()} if inline else None)
                for state, note in zip(finals, notes)]
        image = made[0]
        index = assemble_index(made, notes[0].index, notes[0].index_descriptor) if multi \
            else None
        result: BuiltImage | BuiltIndex = index or image

        async def rootfs(dest: Path, split: bool | None = None) -> None:
            from .sandbox.flatten import flatten_lowers, pin_times

            split = multi if split is None else split  # platform-split= (buildx's default)
            roots = [(platform or Platform.host(), await penv.lowers(state))
                     for platform, (state, penv) in zip(platforms, built)]
            if multi and not split:
                await asyncio.to_thread(_check_merge, roots, work)
            for platform, lowers in roots:
                where = dest / platform_dir(platform) if split else dest
                await asyncio.to_thread(flatten_lowers, lowers, where)
                if sde is not None:
                    await asyncio.to_thread(pin_times, lowers, where, sde, itself=split)

        if opts.explain:
            report_hits(tracking, progress)
        try:
            await export_all(opts.cache_to, tracking, [state.key for state, _ in built], store,
                             progress, remote, (mounts, bdir / "cache-mounts", work))
        except CacheSpecError as exc:
            raise BuildError("--cache-to", str(exc).removeprefix("--cache-to ")) from exc
        # -t names; else those of a type=image/registry output (buildx: -t wins over name=)
        images = [o for o in opts.outputs if o.type in ("image", "registry")]
        tags = list(opts.tags) or [n for o in images for n in o.names]
        push = opts.push or any(o.push for o in images)
        # Layers of imported cache hits still at their source: fetched only for an
        # output that holds them here; a push gives them to the registry directly.
        lazy = remote.pending([d.digest for m in made for d in m.manifest.layers])
        files_out = any(o.type not in ("image", "registry", "cacheonly") for o in opts.outputs)
        try:
            if lazy and (files_out or (tags and not push)):
                await remote.materialise(lazy)
                lazy = []
        except LazyLayerError as exc:
            raise BuildError("--cache-from", str(exc)) from exc
        for out in opts.outputs:
            if out.type in ("image", "registry", "cacheonly"):
                continue
            n = progress.start(export_name(out))
            await export(out, result, store, list(opts.tags) or list(out.names),
                         functools.partial(rootfs, split=out.split), work)
            progress.done(n)
        if tags and lazy:
            await _push_lazy(remote, result, tags, progress, len(lazy))
        elif tags:
            n = progress.start("naming " + ", ".join(tags))
            refs = await tag_images(result, store, tags)
            progress.done(n)
            if push:
                n = progress.start("pushing " + ", ".join(refs))
                await push_images(store, refs, progress=progress, step=n)
                progress.done(n)
        progress.result(str(result.digest), str(result.digest) if index else
                        str(image.manifest.config.digest))
        return BuildResult(image, tuple(progress.cached_names), tuple(progress.ran), index,
                           frozenset(tracking.keys))
    finally:
        if env_ref:
            for task in list(env_ref[0].background):
                task.cancel()
            await asyncio.gather(*env_ref[0].background, return_exceptions=True)
            if env_ref[0].sandbox_probe is not None:  # a thread: let it finish
                await asyncio.gather(env_ref[0].sandbox_probe, return_exceptions=True)
        await asyncio.to_thread(agents.close)
        if env_ref and env_ref[0].lazyfs is not None:
            await env_ref[0].lazyfs.close()  # before the work dir and the sources go
        if remote is not None:
            await remote.close()
        with contextlib.suppress(Exception):  # else gc expires the holds' ingests
            await holds.aclose()
        if cache is not None:
            cache.close()
        if store is not None:
            await store.close()
        if work is not None:
            await asyncio.to_thread(shutil.rmtree, work, True)
            os.close(owner)  # the directory is gone: nothing left for another build
        lock.release()
        if isinstance(sys.exc_info()[1], Exception | None):  # not when interrupted
            await after_build(opts.storage, opts.gc_keep_storage, since, progress)
