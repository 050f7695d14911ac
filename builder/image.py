"""A stage's image as it is being built, and its final config and manifest.

:class:`ImageState` is the stage scheduler's working state of one stage: the container config
(``registry.oci.ContainerConfig``, replaced as instructions change it), the layers so far,
the history, and the cache key chain. :func:`assemble` turns it into the
``ImageConfig`` and ``Manifest`` bytes that outputs write: history entries carry
``created_by`` as BuildKit writes it and ``empty_layer`` for metadata-only steps;
``rootfs.diff_ids`` lists every layer in order.

Times, as BuildKit sets them: a filesystem step's entry carries the time the step first
ran (a step taken from the cache keeps it; with SOURCE_DATE_EPOCH, the epoch's, whichever
build cached the step); a metadata step's entry is added with
``created=""`` and takes, when the image is assembled, the time of the next timed entry
after it (else of the last one before it); the image's ``created`` is its last entry's
time. So a rebuild in which every step comes from the cache writes the same config and
manifest again: the same image digest, and nothing new to store.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace

from cas import Digest
from registry.oci import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_MANIFEST,
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    RootFS,
)

__all__ = ["BuiltImage", "BuiltIndex", "ImageState", "LayerRef", "assemble", "assemble_index",
           "default_arch", "timestamp"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_arch() -> str:
    """This machine's architecture, by its OCI name (``amd64``, ``arm64``)."""
    return Platform.host().architecture


def timestamp(epoch: float) -> str:
    """RFC 3339 in UTC, as image configs carry it."""
    dt = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{dt.microsecond:06d}".rstrip("0") if dt.microsecond else "") + "Z"


@dataclass(frozen=True, slots=True)
class LayerRef:
    """A layer of the image: its descriptor (the compressed blob) and diff_id.
    ``made``: a step of this build made it (with its files' own times: the image gets
    it clamped to SOURCE_DATE_EPOCH, builder.steps.clamp), not a base image."""

    descriptor: Descriptor
    diff_id: Digest
    made: bool = field(default=False, compare=False)


@dataclass
class ImageState:
    """Mutable working state of one stage (never leaves the stage scheduler).

    ENV and LABEL changes are kept in dicts of this state and written into
    :attr:`config` when it is next read, so that a stage of many ENV or LABEL lines
    costs time linear in their number (a new config per line copied every earlier
    entry)."""

    _config: ContainerConfig
    architecture: str = field(default_factory=default_arch)
    os: str = "linux"
    variant: str | None = None
    layers: list[LayerRef] = field(default_factory=list)
    history: list[History] = field(default_factory=list)
    key: str = ""
    author: str | None = None  # MAINTAINER; inherited from the base, as BuildKit does
    # name -> value of the env and the labels, in order, once ENV / LABEL changed them;
    # None: config holds them. Private to this state (never shared with a config).
    _env: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _labels: dict[str, str] | None = field(default=None, repr=False, compare=False)
    # set by the scheduler before each step: a later step of the stage runs a command on
    # its files, so a step that must run starts bringing the layers below it here at once
    # (builder.steps.common.layer_step)
    files_later: bool = field(default=False, repr=False, compare=False)

    @property
    def config(self) -> ContainerConfig:
        if self._env is not None or self._labels is not None:
            changes: dict[str, object] = {}
            if self._env is not None:
                changes["env"] = tuple(f"{k}={v}" for k, v in self._env.items())
            if self._labels is not None:
                changes["labels"] = dict(self._labels)
            self._config = replace(self._config, **changes)  # type: ignore[arg-type]
            self._env = self._labels = None
        return self._config

    @config.setter
    def config(self, value: ContainerConfig) -> None:
        self._env = self._labels = None
        self._config = value

    @classmethod
    def scratch(cls) -> ImageState:
        """``FROM scratch``'s config, as BuildKit starts it: the default PATH, WorkingDir /."""
        return cls(ContainerConfig(env=(f"PATH={DEFAULT_PATH}",), working_dir="/"))

    @classmethod
    def from_config(cls, cfg: ImageConfig, layers: list[LayerRef], key: str) -> ImageState:
        config = cfg.config or ContainerConfig()
        if not config.env:
            config = replace(config, env=(f"PATH={DEFAULT_PATH}",))
        return cls(config, architecture=cfg.architecture, os=cfg.os,
                   variant=cfg.variant, layers=list(layers),
                   history=list(cfg.history or ()), key=key, author=cfg.author)

    def copy(self) -> ImageState:
        return ImageState(self.config, self.architecture, self.os, self.variant,
                          list(self.layers), list(self.history), self.key, self.author)

    # -- config helpers -----------------------------------------------------------------
    def env_map(self) -> dict[str, str]:
        if self._env is not None:
            return dict(self._env)
        out: dict[str, str] = {}
        for e in self._config.env or ():
            k, _, v = e.partition("=")
            out[k] = v
        return out

    def set_env(self, pairs: list[tuple[str, str]]) -> None:
        """ENV: set each name (a new name goes last, a known one keeps its place)."""
        if self._env is None:
            self._env = self.env_map()
        self._env.update(pairs)

    def set_labels(self, pairs: list[tuple[str, str]]) -> None:
        """LABEL: set each label."""
        if self._labels is None:
            self._labels = dict(self._config.labels or {})
        self._labels.update(pairs)

    def update(self, **changes: object) -> None:
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]

    def add_history(self, created_by: str, created: str, empty: bool) -> None:
        self.history.append(History(created=created, created_by=created_by,
                                    comment="buildkit.dockerfile.v0",
                                    empty_layer=True if empty else None))


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """A finished image: manifest, config and their serialised bytes."""

    manifest: Manifest
    manifest_bytes: bytes
    config: ImageConfig
    config_bytes: bytes
    # --annotation manifest-descriptor:K=V, for the descriptor in an index.json
    descriptor_annotations: dict[str, str] | None = None

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest_bytes)

    @property
    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(OCI_MANIFEST, self.digest, len(self.manifest_bytes),
                          annotations=dict(self.descriptor_annotations)
                          if self.descriptor_annotations else None)


@dataclass(frozen=True, slots=True)
class BuiltIndex:
    """A multi-platform build's result: an OCI image index over one image per platform
    (in the order of ``--platform``)."""

    index: Index
    index_bytes: bytes
    images: tuple[BuiltImage, ...]
    # --annotation index-descriptor:K=V, for the index's descriptor in an index.json
    descriptor_annotations: dict[str, str] | None = None

    @property
    def digest(self) -> Digest:
        return Digest.of(self.index_bytes)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(OCI_INDEX, self.digest, len(self.index_bytes),
                          annotations=dict(self.descriptor_annotations)
                          if self.descriptor_annotations else None)


def assemble_index(images: list[BuiltImage], annotations: dict[str, str] | None = None,
                   descriptor_annotations: dict[str, str] | None = None) -> BuiltIndex:
    """The image index of ``images``: one entry per image, with the platform its config
    names and the image's ``manifest-descriptor`` annotations (as BuildKit writes a
    multi-platform result); ``annotations`` are the index's own, ``descriptor_annotations``
    go onto its descriptor in the index.json of outputs."""
    entries = tuple(
        Descriptor(OCI_MANIFEST, image.digest, len(image.manifest_bytes),
                   platform=Platform(image.config.architecture, image.config.os,
                                     variant=image.config.variant),
                   annotations=dict(image.descriptor_annotations)
                   if image.descriptor_annotations else None)
        for image in images)
    index = Index(entries, annotations=dict(annotations) if annotations else None)
    return BuiltIndex(index, index.to_bytes(), tuple(images),
                      dict(descriptor_annotations) if descriptor_annotations else None)


def _timed(history: list[History], fallback: str, pinned: bool) -> tuple[History, ...]:
    """Metadata entries (``created == ""``) timed from their neighbours (module doc), or
    at ``fallback`` when ``pinned``."""
    # the time of the first timed entry after each one (one pass from the end, so that
    # many metadata entries in a row cost linear time)
    after: list[str] = [""] * len(history)
    nxt = ""
    for i in range(len(history) - 1, -1, -1):
        after[i] = nxt
        nxt = history[i].created or nxt
    out = []
    before: str | None = ""
    for i, h in enumerate(history):
        if h.created == "" and pinned:
            h = replace(h, created=fallback)
        elif h.created == "":
            h = replace(h, created=after[i] or before or fallback)
        else:
            before = h.created
        out.append(h)
    return tuple(out)


# A base in Docker's schema 2 brings its layers under Docker's media types; the manifest
# made here is OCI, which names the same blobs by OCI's types, as BuildKit's OCI export and
# skopeo's conversion do (buildah and podman refuse to build on an OCI manifest that lists
# a Docker layer type).
_OCI_LAYER_TYPES = {DOCKER_LAYER: OCI_LAYER_GZIP,
                    DOCKER_FOREIGN_LAYER: OCI_LAYER_NONDISTRIBUTABLE_GZIP}


def _oci_layer(desc: Descriptor) -> Descriptor:
    kind = _OCI_LAYER_TYPES.get(desc.media_type)
    return desc if kind is None else replace(desc, media_type=kind)


def assemble(state: ImageState, created: str, *, pinned: bool = False,
             annotations: dict[str, str] | None = None,
             descriptor_annotations: dict[str, str] | None = None,
             config_fields: dict[str, object] | None = None) -> BuiltImage:
    """The OCI config and manifest of ``state``. ``created`` is the time of a build with
    no timed history entry at all; ``pinned`` (SOURCE_DATE_EPOCH) makes it the time of
    the image and of every metadata entry. ``annotations`` go into the manifest,
    ``descriptor_annotations`` onto its descriptor in the index.json of outputs;
    ``config_fields`` are top-level fields of the config (an inline build cache)."""
    history = _timed(state.history, created, pinned)
    cfg = ImageConfig(
        architecture=state.architecture,
        os=state.os,
        variant=state.variant,
        rootfs=RootFS(tuple(layer.diff_id for layer in state.layers)),
        created=created if pinned else next(
            (h.created for h in reversed(history) if h.created), created),
        author=state.author,
        config=state.config,
        history=history,
        extra=dict(config_fields or {}),
    )
    config_bytes = cfg.to_bytes()
    manifest = Manifest(
        config=Descriptor(OCI_CONFIG, Digest.of(config_bytes), len(config_bytes)),
        layers=tuple(_oci_layer(layer.descriptor) for layer in state.layers),
        annotations=dict(sorted(annotations.items())) if annotations else None,
    )
    return BuiltImage(manifest, manifest.to_bytes(), cfg, config_bytes,
                      dict(descriptor_annotations) if descriptor_annotations else None)
