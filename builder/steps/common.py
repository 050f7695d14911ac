"""What every filesystem step shares: :class:`StepEnv`, :class:`BuildError`, and
:func:`layer_step` (cache lookup -> produce an upper dir -> layer -> CAS -> cache)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cas import Digest, Store
from cas.holders import cache_holder
from registry.oci import Descriptor

from ..cache import BuildCacheBackend, CachedLayer, facts_key, step_key
from ..context import SourceTree
from ..dockerfile.instructions import Instruction
from ..extracted import ExtractedLayers
from ..image import ImageState, LayerRef
from ..layers.errors import ChangesetError
from ..progress import BuildProgress

if TYPE_CHECKING:
    from ..cache.lazy import MountSources, RemoteLayers
    from ..contexts import NamedContexts
    from ..lazyfs.layers import LazyMounts

__all__ = ["BuildError", "StepEnv", "cached_facts", "instruction_text", "layer_step",
           "lower_facts", "valid_facts", "valid_files"]


def instruction_text(ins: Instruction) -> str:
    """The expanded instruction as the cache sees it (its position in the file is not
    part of it: moving a step does not invalidate it)."""
    doc = ins.to_json()
    doc.pop("lines", None)
    return json.dumps(doc, sort_keys=True, default=str)


class BuildError(Exception):
    """A build failure located at an instruction: ``file:line: INSTRUCTION: problem``."""

    def __init__(self, where: str, message: str, exit_code: int | None = None) -> None:
        self.exit_code = exit_code
        super().__init__(f"{where}: {message}")


@dataclass
class StepEnv:
    """Everything a step may use; one per build."""

    store: Store
    cache: BuildCacheBackend
    extracted: ExtractedLayers
    progress: BuildProgress
    context: SourceTree
    work: Path  # this build's scratch directory (removed at the end)
    cache_mounts: Path
    dockerfile: str
    proxy_env: Mapping[str, str] = field(default_factory=dict)
    source_date_epoch: int | None = None
    compression: str = "gzip"
    no_cache: bool = False
    explain: bool = False
    network: str = "default"
    secrets: Mapping[str, Path | bytes] = field(default_factory=dict)
    # --ssh: agent id -> the host socket RUN --mount=type=ssh forwards to
    ssh: Mapping[str, Path] = field(default_factory=dict)
    # --allow: entitlements granted (security.insecure)
    allow: frozenset[str] = frozenset()
    # --differ: auto (overlayfs where it mounts, else snapshot), overlay or snapshot
    differ: str = "auto"
    # --pull: ask the registry for every base image's current manifest
    pull: bool = False
    # --add-host (name, ip) pairs, --shm-size bytes, --ulimit (name, soft, hard): RUN's
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None
    ulimits: tuple[tuple[str, int, int], ...] = ()
    created: str = ""
    # --build-context: named contexts (builder.contexts.NamedContexts)
    contexts: NamedContexts | None = None
    # set by the stage scheduler: flattened root of a stage or image named by --from / from=
    # (and with a directory of it, relative: maybe only that directory)
    stage_root: Callable[..., Awaitable[Path]] | None = None
    # ... and the cache key of a stage of this build so named (None: not such a stage)
    stage_key: Callable[[str], Awaitable[str | None]] | None = None
    # a multi-platform build: how many RUN processes may run at once (one per core)
    run_slots: asyncio.Semaphore | None = None
    # steps running now, by cache key (equal steps in two stages run once)
    inflight: dict[str, asyncio.Future[CachedLayer]] = field(default_factory=dict)
    # --cache-from: imported hits whose blobs stay at their source (builder.cache.lazy)
    remote: RemoteLayers | None = None
    # --cache-from / --cache-to cache-mounts=true: RUN --mount=type=cache contents
    mounts: MountSources | None = None
    # layers brought here ahead of the step that needs them (prefetch); the build
    # cancels what is left when it ends
    background: set[asyncio.Future[Any]] = field(default_factory=set)
    # --cache-from: lazy layers a RUN step reads through FUSE (builder.lazyfs)
    lazyfs: LazyMounts | None = None
    # holds on the blobs of the local base images used, released when the build ends: an
    # `rmi` and a `storage gc` in another process meanwhile do not take them (cas.lease)
    holds: contextlib.AsyncExitStack | None = None
    # the overlayfs probe started ahead of the first RUN (warm_sandbox), awaited at the end
    sandbox_probe: asyncio.Future[Any] | None = None

    def where(self, ins: Instruction) -> str:
        return f"{self.dockerfile}:{ins.start_line}: {ins.keyword}"

    def scratch(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.work))

    def warm_sandbox(self) -> None:
        """Start, once, what the sandbox asks before a RUN's first mount (can overlayfs
        be mounted on the work dir's filesystem: a probe in a subprocess,
        builder.sandbox.rootfs) in a thread, while the layers are brought in."""
        if self.sandbox_probe is None and self.differ != "snapshot":
            from ..sandbox.rootfs import overlay_supported

            self.sandbox_probe = asyncio.ensure_future(
                asyncio.to_thread(overlay_supported, self.work))

    def prefetch(self, layers: list[LayerRef]) -> None:
        """Start bringing ``layers`` here (fetched if lazy, extracted) in the background:
        a step that runs now makes every later step of its stage run, and a later RUN
        will need them; its own :meth:`lowers` then waits for what is still under way. A
        failure is left for that step to meet again (and report)."""
        if not layers:
            return
        self.warm_sandbox()
        task = asyncio.ensure_future(self.extracted.lowers(
            [(layer.diff_id, layer.descriptor.digest) for layer in layers],
            self.lazyfs.lower if self.lazyfs is not None else None))
        self.background.add(task)
        task.add_done_callback(_settled(self.background))

    async def lowers(self, state: ImageState, *, lazy: bool = False) -> list[Path]:
        """The state's layers as overlay lower dirs (top first). ``lazy`` (a RUN step's,
        read only through its sandbox's overlay): a layer still at its cache source may
        be a FUSE mount (builder.lazyfs), whose files are fetched when read; nothing on
        the event loop may read such a directory's files."""
        return await self.extracted.lowers(
            [(layer.diff_id, layer.descriptor.digest) for layer in state.layers],
            self.lazyfs.lower if lazy and self.lazyfs is not None else None)


def _settled(tasks: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the step that needs the layers meets it again
    return done


class _IngestSink:
    """A write-only file, for a worker thread, whose bytes go into a CAS ingest on the
    event loop ``loop`` (gathered into blocks of :data:`_SINK_BLOCK`; each block is
    written before the next is taken, so memory stays bounded)."""

    def __init__(self, ingest: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._ingest = ingest
        self._loop = loop
        self._parts: list[bytes] = []  # handed over as they are: no copying
        self._size = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._size >= _SINK_BLOCK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._parts:
            parts, self._parts, self._size = self._parts, [], 0
            asyncio.run_coroutine_threadsafe(self._put(parts), self._loop).result()

    async def _put(self, parts: list[bytes]) -> None:
        for p in parts:
            await self._ingest.write(p)


_SINK_BLOCK = 4 << 20


def _write(upper: Path, sink: _IngestSink, compression: str) -> Any:
    # The layer writer (FastCDC, compressors) only on a cache miss.
    from ..layers.chunked import write_layer
    from ..layers.overlay import changeset_from_upper

    changeset = changeset_from_upper(upper)
    if not changeset.entries and not changeset.whiteouts:
        return None
    blob = write_layer(changeset, sink, compression=compression)  # type: ignore[arg-type]
    sink.flush()
    return blob


async def cached_facts(env: StepEnv, state: ImageState, what: dict[str, Any],
                       compute: Callable[[], Awaitable[dict[str, Any]]],
                       valid: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """What a step reads from layers before its key can be made (COPY's resolved
    destination and ``--chown`` ids from the stage's layers, the hashes of the files it
    copies from another stage): ``compute()``, remembered in the cache under the stage's
    key and ``what`` (:func:`builder.cache.facts_key`), which must name everything else
    they depend on (the keys cover the layers). A build that finds them, locally or in an
    imported cache, needs no layer extracted (or fetched) for a step that hits.
    Facts that ``valid`` refuses (from a cache made elsewhere) are computed again."""
    key, parent = facts_key(state.key, what)
    if not env.no_cache:
        found = await asyncio.to_thread(env.cache.lookup, key)
        if found is not None and found.facts is not None and valid(found.facts):
            return found.facts
    facts = await compute()
    await asyncio.to_thread(env.cache.record, key, parent, "facts", what,
                            CachedLayer("", 0, "", "", facts=facts))
    return facts


async def lower_facts(env: StepEnv, state: ImageState, what: dict[str, Any],
                      compute: Callable[[list[Path]], dict[str, Any]],
                      valid: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """:func:`cached_facts` computed from the stage's layers: ``compute(lowers)``."""
    async def from_lowers() -> dict[str, Any]:
        return await asyncio.to_thread(compute, await env.lowers(state))
    return await cached_facts(env, state, what, from_lowers, valid)


def valid_facts(facts: dict[str, Any]) -> bool:
    """Facts from a cache (maybe another machine's) that are safe to write by: an
    absolute, normalised destination and two ids."""
    dest, owner = facts.get("dest"), facts.get("owner")
    return (isinstance(dest, str) and dest.startswith("/") and "\0" not in dest
            and posixpath.normpath(dest) in (dest, dest.rstrip("/"))
            and "/../" not in dest + "/" and isinstance(facts.get("dir"), bool)
            and (owner is None or (isinstance(owner, list) and len(owner) == 2 and all(
                isinstance(i, int) and 0 <= i < 2**32 for i in owner))))


def valid_files(facts: dict[str, Any]) -> bool:
    """Facts holding the hashes of copied files (path -> hash)."""
    files = facts.get("files")
    return isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in files.items())


# The parent of every independent (``--link``) layer's cache key.
LINK_PARENT = "link"


async def layer_step(env: StepEnv, state: ImageState, ins: Instruction, name: str,
                     instruction: str, created_by: str, inputs: dict[str, Any],
                     produce: Callable[[int], Awaitable[Path]], *,
                     independent: bool = False) -> None:
    """Run (or reuse) one filesystem step and append its layer to ``state``.

    ``produce(step_no)`` returns a directory in overlayfs upper-dir format holding the
    step's changes; it is only called on a cache miss.

    ``independent`` (``COPY --link``): the layer does not depend on the layers below
    (``produce`` must not read them), so its cache key leaves the parent out and the
    cached layer is reused whatever the earlier steps were, as BuildKit rebases a
    linked layer. The stage's key chain still covers both, for the steps after it.
    """
    # The layer is cached with its files' own times whatever the epoch, as BuildKit's
    # cache keeps it: a step sees the epoch only through an ARG SOURCE_DATE_EPOCH (in
    # ``instruction``), and the image gets its layers clamped (builder.steps.clamp).
    # ("sde": None keeps the keys that releases which put the epoch here gave without one.)
    inputs = {**inputs, "compression": env.compression, "sde": None}
    parent = LINK_PARENT if independent else state.key
    key = step_key(parent, instruction, inputs)
    n = env.progress.start(name)
    running = env.inflight.get(key)
    if running is not None:
        # the same step (same parent, instruction and inputs) is running in another
        # stage of this build: share its result, as BuildKit merges equal vertices
        cached = await asyncio.shield(running)
        env.progress.cached(n)
    else:
        future: asyncio.Future[CachedLayer] = asyncio.get_running_loop().create_future()
        env.inflight[key] = future
        try:
            layers = list(state.layers) if state.files_later and not independent else []
            cached = await _run_or_reuse(env, parent, key, instruction, inputs, n, produce,
                                         lambda: env.prefetch(layers), env.where(ins))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only the waiters (if any) re-raise it
            raise
        finally:
            env.inflight.pop(key, None)
        future.set_result(cached)
    if independent:
        before, state.key = state.key, step_key(state.key, LINK_PARENT, {"layer": key})
        if env.remote is not None:  # so that mode=min exports follow the stage's chain
            env.remote.cache.note_link(state.key, key, before)
    else:
        state.key = key
    if cached.digest:
        state.layers.append(LayerRef(
            Descriptor(cached.media_type, Digest.parse(cached.digest), cached.size),
            Digest.parse(cached.diff_id), made=cached.epoch is None))
    # The time the step first ran: a step from the cache keeps its time (as BuildKit
    # does), so a rebuild that changed nothing gives the same image digest; with an
    # epoch, the epoch's (the entry may come from a build with another one).
    created = env.created if env.source_date_epoch is not None else cached.created
    state.add_history(created_by, created or env.created, empty=not cached.digest)


async def _run_or_reuse(env: StepEnv, parent: str, key: str, instruction: str,
                        inputs: dict[str, Any], n: int,
                        produce: Callable[[int], Awaitable[Path]],
                        on_miss: Callable[[], None], where: str) -> CachedLayer:
    cached = None if env.no_cache else await asyncio.to_thread(env.cache.lookup, key)
    unusable: str | None = None
    if cached is not None and cached.epoch is not None \
            and cached.epoch != env.source_date_epoch:
        unusable = (f"its cached layer (from an inline cache) has the file times of "
                    f"SOURCE_DATE_EPOCH={cached.epoch}, not of this build's epoch "
                    f"({env.source_date_epoch if env.source_date_epoch is not None else 'none'})")
        cached = None
    if cached is not None and cached.digest and await env.store.stat(
            Digest.parse(cached.digest)) is None:
        # an imported hit: usable while its source holds the blob (fetched when needed)
        unusable = "its cached layer is no longer stored" if env.remote is None \
            else await env.remote.usable(key, cached)
        if unusable is not None:
            cached = None
    if cached is not None:
        if env.remote is not None:
            env.remote.cache.note_hit(key)
        env.progress.cached(n)
        if env.explain:
            env.progress.explain_hit(n, env.remote.source_of(key) if env.remote else "local")
        return cached
    on_miss()
    if env.explain and not env.no_cache:
        reason = unusable if unusable is not None else await asyncio.to_thread(
            env.cache.explain, parent, instruction, inputs)
        env.progress.explain(n, reason)
    try:
        upper = await produce(n)
    except BuildError as exc:
        env.progress.error(n, str(exc).splitlines()[0])
        raise
    # The layer goes straight into the store as it is written: no temporary file to
    # write and read back; the store verifies the writer's digest at commit.
    ingest = await env.store.begin_ingest(algorithm="sha256")
    try:
        sink = _IngestSink(ingest, asyncio.get_running_loop())
        try:
            blob = await asyncio.to_thread(_write, upper, sink, env.compression)
        except ChangesetError as exc:  # what the step made cannot be a layer: said there
            env.progress.error(n, str(exc))
            raise BuildError(where, str(exc)) from exc
        if blob is not None:
            await ingest.commit(blob.digest, link=cache_holder(key))
    finally:
        await ingest.abort()  # a no-op once committed
    if blob is None:
        cached = CachedLayer("", 0, "", "", env.created)
        await asyncio.to_thread(shutil.rmtree, upper, True)
    else:
        cached = CachedLayer(str(blob.digest), blob.size, str(blob.diff_id), blob.media_type,
                             env.created)
        await asyncio.to_thread(env.extracted.adopt, blob.diff_id, upper)
    await asyncio.to_thread(env.cache.record, key, parent, instruction, inputs, cached)
    env.progress.done(n)
    return cached
