"""``--build-context NAME=VALUE``: named contexts, as buildx passes them to BuildKit.

VALUE is a local directory, ``docker-image://REF`` or ``oci-layout://DIR[:TAG][@DIGEST]``.
A named context stands in wherever the Dockerfile uses NAME:

- ``FROM NAME`` and ``COPY --from=NAME`` / ``RUN --mount=from=NAME`` where NAME is an
  image: the context is used instead of pulling that image;
- a stage called NAME (``FROM ... AS NAME``): the stage is replaced by the context; its
  instructions do not run, and the stages only it needed are not built.

Names match as BuildKit matches them: an image reference in its familiar form without
``:latest`` (``alpine``, ``alpine:latest`` and ``docker.io/library/alpine`` are one
name), a stage name case-insensitively. A local directory is read with its own
``.dockerignore``; as a ``FROM`` base it becomes one layer of its files (owned by root,
as COPY writes them), under an empty config.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from cas import Digest, Store
from registry.client.refs import DEFAULT_HOST, InvalidReference, parse_image_ref
from registry.oci import OCI_CONFIG, ContainerConfig, Descriptor, ImageConfig, Manifest, RootFS

from .base import BaseImage, BaseImageError, resolve_base
from .context import FileHashStore, SourceTree
from .dockerfile.stages import BuildPlan, Stage
from .ignore import read_ignore_file
from .image import LayerRef
from .layers.chunked import LayerBlob

__all__ = ["BuildContextError", "NamedContext", "NamedContexts", "context_key", "parse_build_context"]


class BuildContextError(ValueError):
    """A ``--build-context`` value that cannot be used (says what to write instead)."""


def context_key(name: str) -> str:
    """The name a context and a Dockerfile reference are matched by (module docstring)."""
    try:
        ref = parse_image_ref(name)
    except (InvalidReference, ValueError):
        return name.lower()
    if ref.digest is not None:
        return name.lower()
    repo = ref.name.removeprefix("library/") if ref.host == DEFAULT_HOST \
        else f"{ref.host}/{ref.name}"
    tag = ref.tag if ref.tag and ref.tag != "latest" else ""
    return f"{repo}:{tag}" if tag else repo


@dataclass(frozen=True)
class NamedContext:
    """One ``--build-context``: a local directory, or an image reference for FROM."""

    name: str
    directory: Path | None = None
    image: str | None = None  # what resolve_base reads: a registry ref or oci-layout://...

    def describe(self) -> str:
        return str(self.directory) if self.directory is not None else f"{self.image}"


def parse_build_context(text: str) -> NamedContext:
    """One ``--build-context NAME=VALUE`` (BuildContextError says what to write)."""
    name, eq, value = text.partition("=")
    if not eq or not name or not value:
        raise BuildContextError(f"{text!r}: expected NAME=DIR, NAME=docker-image://REF or "
                                "NAME=oci-layout://DIR[@DIGEST]")
    if value.startswith("docker-image://"):
        image = value[len("docker-image://"):]
        try:
            parse_image_ref(image)
        except (InvalidReference, ValueError) as exc:
            raise BuildContextError(f"{text!r}: {exc}") from None
        return NamedContext(name, image=image)
    if value.startswith("oci-layout://"):
        path = value[len("oci-layout://"):].partition("@")[0]
        if not any(Path(p).is_dir() for p in (path, path.partition(":")[0], path.rpartition(":")[0]) if p):
            hint = (f"; a layout in a tar is read unpacked: mkdir DIR && tar -xf {path} -C DIR, "
                    "then name oci-layout://DIR" if Path(path).is_file() else "")
            raise BuildContextError(f"{text!r}: {path} is not an OCI image layout directory{hint}")
        return NamedContext(name, image=value)
    if "://" in value or value.startswith("git@") or value.startswith("target:"):
        raise BuildContextError(f"{text!r}: only a local directory, docker-image://REF and "
                                "oci-layout://DIR are supported as named contexts")
    directory = Path(value)
    if not directory.is_dir():
        raise BuildContextError(f"{text!r}: {value} is not a directory")
    return NamedContext(name, directory=directory.absolute())


@dataclass
class NamedContexts:
    """The build's named contexts, and what each became (read once per build)."""

    contexts: tuple[NamedContext, ...] = ()
    _by_key: dict[str, NamedContext] = field(default_factory=dict, init=False)
    _bases: dict[tuple[str, str], asyncio.Task[BaseImage]] = field(default_factory=dict,
                                                                   init=False)

    def __post_init__(self) -> None:
        self._by_key = {context_key(c.name): c for c in self.contexts}

    def __bool__(self) -> bool:
        return bool(self.contexts)

    def find(self, ref: str) -> NamedContext | None:
        """The context named ``ref`` (a stage name or an image reference), if any."""
        return self._by_key.get(context_key(ref)) if self.contexts else None

    def replaces(self, stage: Stage) -> NamedContext | None:
        """The context that replaces ``stage``, if any."""
        return self.find(stage.name) if stage.name else None

    def prune(self, plan: BuildPlan) -> BuildPlan:
        """``plan`` without the stages that only replaced stages needed."""
        if not self.contexts:
            return plan
        reached: set[int] = set()
        todo = [plan.target]
        while todo:
            i = todo.pop()
            if i in reached:
                continue
            reached.add(i)
            if self.replaces(plan.stages[i]) is None:
                todo.extend(plan.stages[i].depends_on)
        return replace(plan, needed=tuple(i for i in plan.needed if i in reached))

    async def base(self, ctx: NamedContext, store: Store, platform: str,
                   work: Path) -> BaseImage:
        """The context as a base image (once per context and platform)."""
        key = (ctx.name, platform)
        if key not in self._bases:
            self._bases[key] = asyncio.create_task(self._load(ctx, store, platform, work))
        return await self._bases[key]

    async def _load(self, ctx: NamedContext, store: Store, platform: str,
                    work: Path) -> BaseImage:
        if ctx.image is not None:
            try:
                return await resolve_base(ctx.image, store, platform)
            except BaseImageError as exc:
                raise BaseImageError(f"--build-context {ctx.name}={ctx.describe()}: {exc}") \
                    from exc
        assert ctx.directory is not None
        return await _directory_image(ctx, store, platform, work)

    def tree(self, ctx: NamedContext, hash_store: FileHashStore | None = None) -> SourceTree:
        """A local context as a COPY source, with its own ``.dockerignore``."""
        assert ctx.directory is not None
        return SourceTree(ctx.directory, read_ignore_file(ctx.directory, None),
                          what=f"build context {ctx.name!r}", hash_store=hash_store)


async def _directory_image(ctx: NamedContext, store: Store, platform: str,
                           work: Path) -> BaseImage:
    from .layers import import_directory

    directory = ctx.directory
    assert directory is not None
    os_, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    layer_file = work / f"context-{context_key(ctx.name).replace('/', '_')}.tar"

    def write() -> LayerBlob:
        matcher = read_ignore_file(directory, None)
        tree = directory
        if matcher.patterns:  # the files .dockerignore leaves, copied aside
            tree = work / f"context-{context_key(ctx.name).replace('/', '_')}"

            def ignored(where: str, names: list[str]) -> list[str]:
                rel = os.path.relpath(where, directory)
                out = []
                for name in names:
                    path = name if rel == "." else f"{rel}/{name}"
                    if matcher.excluded(path) and not (
                            os.path.isdir(os.path.join(where, name))
                            and matcher.may_reinclude_below(path)):
                        out.append(name)
                return out

            shutil.copytree(directory, tree, symlinks=True, ignore=ignored)
        try:
            with open(layer_file, "wb") as f:
                return import_directory(tree, f, source_date_epoch=0, owner=(0, 0))
        finally:
            if tree != directory:
                shutil.rmtree(tree, ignore_errors=True)

    blob = await asyncio.to_thread(write)
    holder = f"cache:context:{blob.digest}"
    try:
        if await store.stat(blob.digest) is None:
            await store.put_file(layer_file, expected=blob.digest, link=holder)
        else:
            await store.link(holder, blob.digest)
    finally:
        layer_file.unlink(missing_ok=True)
    layer = LayerRef(Descriptor(blob.media_type, blob.digest, blob.size), blob.diff_id)
    config = ImageConfig(architecture=arch, os=os_, variant=variant or None,
                         rootfs=RootFS((layer.diff_id,)), config=ContainerConfig())
    raw = config.to_bytes()
    manifest = Manifest(config=Descriptor(OCI_CONFIG, Digest.of(raw), len(raw)),
                        layers=(layer.descriptor,))
    return BaseImage(f"context:{ctx.name}", Digest.of(manifest.to_bytes()), config, (layer,))
