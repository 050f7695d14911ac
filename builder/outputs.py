"""Where a built image goes: ``--output`` / ``-o`` in buildx's words.

========================================  ============================================
``-o DIR`` / ``type=local,dest=DIR``      the final root filesystem, as files
``-o -`` / ``type=tar[,dest=FILE|-]``     the root filesystem as a tar (default: stdout)
``type=oci[,dest=FILE|-]``                an OCI image layout as a tar (default: stdout)
``type=oci,dest=DIR,tar=false``           an OCI image layout directory
``type=docker,dest=FILE|-``               a ``docker load`` archive
``type=docker,dest=DIR,tar=false``        the same files, as a directory
``type=docker`` (or ``--load``)           loaded into the Docker engine (builder.engine)
``type=image[,name=N][,push=true]``       the local image store (as ``-t``), pushed
``type=registry[,name=N]``                pushed (as ``--push``)
``type=cacheonly``                        nothing but the build cache
========================================  ============================================

Fields are CSV (``"name=a,b"`` quotes a comma), keys are case-insensitive, as buildx parses
them. ``-t`` names (else ``name=``) go into an OCI index (``org.opencontainers.image.ref.name``,
the tag) and a docker archive's ``RepoTags``. Archives are streamed from the CAS: no layer is
copied twice. A file (or a new local directory: builder.output_files) is written under a
temporary name and renamed into place, so a failed build leaves no half-written archive
behind, and the next writer removes what a killed one left. A multi-platform build's image index goes
into ``oci`` layouts and the image store as it is (``index.json`` names the index); the
``local`` and ``tar`` outputs hold one directory per platform (``linux_arm64/``, as buildx);
``docker`` archives and engines take one platform's image only.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import shutil
import sys
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cas import Digest, Store
from registry.client.layout_claims import undone_on_failure
from registry.client.layouts import LayoutError
from registry.client.leftovers import held_temporary
from registry.client.refs import InvalidReference, parse_image_ref
from registry.oci import Descriptor, Index

from .image import BuiltImage, BuiltIndex
from .output_errors import ExportError, OutputError, cannot_write
from .output_files import export_local, tree_chunks

__all__ = ["ExportError", "Output", "OutputError", "export", "export_name", "image_archive",
           "parse_output", "write_oci_layout"]

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
TYPES = ("local", "tar", "oci", "docker", "image", "registry", "cacheonly")
_KEYS = {"local": ("dest", "platform-split"), "tar": ("dest", "platform-split"),
         "oci": ("dest", "tar", "name"),
         "docker": ("dest", "tar", "name"), "image": ("name", "push"),
         "registry": ("name",), "cacheonly": ()}
# Keys buildx knows that pybuild does not take, and what to do instead.
_INSTEAD = {
    "compression": "layers are compressed as --compression says",
    "compression-level": "layers are compressed as --compression says",
    "force-compression": "layers are compressed as --compression says",
    "rewrite-timestamp": "file times are always clamped to SOURCE_DATE_EPOCH when one is given",
    "oci-mediatypes": "images use OCI media types",
    "buildinfo": "no build info is written",
}
_TRUE = ("1", "t", "true")
_FALSE = ("0", "f", "false")


@dataclass(frozen=True, slots=True)
class Output:
    """One ``--output``. ``dest`` None: stdout when ``stdout``, else (``docker``) the engine."""

    type: str
    dest: Path | None = None
    tar: bool = True
    names: tuple[str, ...] = ()
    push: bool = False
    stdout: bool = False
    # local, tar: one directory per platform (buildx's platform-split); None: when several
    split: bool | None = None

    @property
    def loads(self) -> bool:
        """Whether this output loads the image into the Docker engine."""
        return self.type == "docker" and self.dest is None and not self.stdout


def _bool(kind: str, key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise OutputError(f"type={kind}: {key}={value}: use {key}=true or {key}=false")


def parse_output(text: str) -> Output:
    """One ``--output`` value, as buildx reads it (``OutputError`` says what to write)."""
    if not text.strip():
        raise OutputError("an empty value: write type=TYPE,dest=PATH, or -o DIR for the files")
    try:
        fields = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration) as exc:
        raise OutputError(f"{text!r}: {exc}: quote a value with commas as \"name=a,b\"") \
            from None
    attrs: dict[str, str] = {}
    if len(fields) == 1 and fields[0] == text and not text.startswith("type="):
        key = text.partition("=")[0].strip().lower()
        if "=" in text and (key in _INSTEAD or any(key in k for k in _KEYS.values())):
            raise OutputError(f"{text}: type= is missing: write type=TYPE,{text} "
                              f"(TYPE one of {', '.join(TYPES)})")
        if text != "-":
            return Output("local", Path(text))
        kind = "tar"
        attrs["dest"] = "-"
    else:
        kind = ""
        for f in fields:
            key, eq, value = f.partition("=")
            key = key.strip().lower()
            if not eq or not key:
                raise OutputError(f"{f!r} is not KEY=VALUE: write type=TYPE,dest=PATH")
            if key == "type":
                kind = value
            else:
                attrs[key] = value
        if not kind:
            raise OutputError(f"{text}: type= is missing: write type=TYPE,... "
                              f"(TYPE one of {', '.join(TYPES)})")
    if kind not in _KEYS:
        raise OutputError(f"type={kind} is not an output type: use one of {', '.join(TYPES)} "
                          "(or -o DIR for type=local,dest=DIR)")
    for key in sorted(attrs):
        if key not in _KEYS[kind]:
            takes = ", ".join(_KEYS[kind]) or "no keys"
            instead = f" ({_INSTEAD[key]})" if key in _INSTEAD else ""
            raise OutputError(f"type={kind} does not take {key}={attrs[key]}{instead}; "
                              f"it takes {takes}")
    names = tuple(n.strip() for n in attrs.get("name", "").split(",") if n.strip())
    split = _bool(kind, "platform-split", attrs["platform-split"]) \
        if "platform-split" in attrs else None
    dest = attrs.get("dest")
    if kind == "local":
        if not dest:
            raise OutputError("type=local needs dest=DIR, the directory to write the files to")
        if dest == "-":
            raise OutputError("type=local writes a directory; for a tar on stdout write -o - "
                              "(type=tar,dest=-)")
        return Output("local", Path(dest), split=split)
    if kind in ("image", "registry", "cacheonly"):
        push = kind == "registry" or _bool(kind, "push", attrs.get("push", "false"))
        return Output(kind, None, names=names, push=push)
    tar = _bool(kind, "tar", attrs.get("tar", "true"))
    if dest is None and kind != "docker":
        dest = "-"  # as buildx: oci and tar go to stdout without a dest
    if not tar and (dest is None or dest in ("", "-")):
        raise OutputError(f"type={kind},tar=false writes a directory: give dest=DIR")
    if dest == "-":
        return Output(kind, None, tar, names, stdout=True, split=split)
    if dest == "":
        raise OutputError(f"type={kind}: dest= is empty: give dest=FILE (or dest=- for stdout)")
    return Output(kind, Path(dest) if dest is not None else None, tar, names, split=split)


def export_name(out: Output) -> str:
    """What the progress line says (BuildKit's words)."""
    where = "stdout" if out.stdout else str(out.dest)
    if out.type == "local":
        return f"exporting to client directory {where}"
    if out.type == "tar":
        return f"exporting to client tarball {where}"
    if out.loads:
        from .engine import engine_address

        return f"loading the image into the Docker engine at {engine_address()[0]}"
    return f"exporting to {out.type} image format {where}"


# ---------------------------------------------------------------------------------------
# Image layouts and archives


def _repo_tags(names: Sequence[str]) -> list[str]:
    return [t if ":" in t.rsplit("/", 1)[-1] else f"{t}:latest" for t in names]


Built = BuiltImage | BuiltIndex


def _index(image: Built, names: Sequence[str]) -> bytes:
    """One entry per name, annotated as ``docker save`` (containerd's exporter) does: the
    tag as ``org.opencontainers.image.ref.name``, the full reference as
    ``io.containerd.image.name``; one plain entry without names. A multi-platform build's
    entries name its image index (as buildx writes it)."""
    desc = image.descriptor if isinstance(image, BuiltIndex) else image.manifest_descriptor
    entries = []
    for name in names:
        try:
            ref = parse_image_ref(name)
        except InvalidReference:
            raise ExportError(f"-t {name}: not an image name (such as registry/repo:tag)") \
                from None
        annotations = {**(desc.annotations or {}), REF_NAME: ref.tag or "latest",
                       IMAGE_NAME: str(ref)}
        entries.append(Descriptor(desc.media_type, desc.digest, desc.size,
                                  annotations=annotations))
    return Index(tuple(entries) or (desc,)).to_bytes()


def _blob(digest: Digest) -> str:
    """A blob's path in an image layout (image-spec image-layout.md)."""
    return f"blobs/{digest.algorithm}/{digest.encoded}"


def _docker_manifest(image: BuiltImage, names: Sequence[str]) -> bytes:
    return json.dumps([{
        "Config": _blob(image.manifest.config.digest),
        "RepoTags": _repo_tags(names) or None,
        "Layers": [_blob(d.digest) for d in image.manifest.layers],
    }]).encode()


_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def _header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid = size, 0, 0, 0
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT)  # long (sha512) names need PAX


def _pad(size: int) -> bytes:
    return b"\0" * (-size % 512)


async def image_archive(image: Built, store: Store, names: Sequence[str],
                        docker: bool) -> AsyncIterator[bytes]:
    """The image as a tar stream: an OCI image layout, plus ``manifest.json`` for
    ``docker load`` when ``docker`` (as Docker 25's ``docker save`` writes it)."""
    if docker and isinstance(image, BuiltIndex):
        raise ExportError("a docker archive holds one platform's image: build one platform "
                          "for type=docker (or write type=oci)")
    layers, files = _layout_parts(image)
    algorithms = sorted({d.digest.algorithm for d in layers}
                        | {d.algorithm for d, _ in files})
    yield _header("blobs/", 0, True) + b"".join(_header(f"blobs/{a}/", 0, True)
                                                 for a in algorithms)
    for layer in layers:
        info = await store.stat(layer.digest)
        if info is None:
            raise ExportError(f"layer {layer.digest} is not in the store; build again")
        yield _header(_blob(layer.digest), info.size)
        written = 0
        async for chunk in store.read(layer.digest):
            written += len(chunk)
            yield chunk
        if written != info.size:
            raise ExportError(f"layer {layer.digest}: read {written} of {info.size} bytes")
        yield _pad(info.size)
    named = [(_blob(d), data) for d, data in files]
    named += [("oci-layout", _LAYOUT), ("index.json", _index(image, names))]
    if docker:
        assert isinstance(image, BuiltImage)
        named.append(("manifest.json", _docker_manifest(image, names)))
    for name, data in named:
        yield _header(name, len(data)) + data + _pad(len(data))
    yield b"\0" * 1024


def _layout_parts(image: Built) -> tuple[list[Descriptor], list[tuple[Digest, bytes]]]:
    """The layers (each once) and the other blobs (configs, manifests, the index) of an
    image layout holding ``image``."""
    members = image.images if isinstance(image, BuiltIndex) else (image,)
    layers = list({d.digest: d for m in members for d in m.manifest.layers}.values())
    files: dict[Digest, bytes] = {}
    for m in members:
        files[m.manifest.config.digest] = m.config_bytes
        files[m.digest] = m.manifest_bytes
    if isinstance(image, BuiltIndex):
        files[image.digest] = image.index_bytes
    return layers, list(files.items())


async def write_oci_layout(image: Built, store: Store, dest: Path,
                           names: Sequence[str], docker: bool = False) -> None:
    """An image layout directory at ``dest`` (created). An existing layout gains the blobs,
    and its ``index.json`` this image's entries as BuildKit adds them (:func:`_merged`),
    last. A write that fails takes back the blobs it wrote that no other writer of the
    layout needs (:mod:`registry.client.layout_claims`)."""
    if docker and isinstance(image, BuiltIndex):
        raise ExportError("a docker archive holds one platform's image: build one platform "
                          "for type=docker (or write type=oci)")
    layers, blobs = _layout_parts(image)
    entries = Index.parse(_index(image, names)).manifests
    async with undone_on_failure(dest) as layout:
        assert layout is not None
        for layer in layers:
            await layout.export_blob(store, layer.digest)
        for digest, data in blobs:
            await layout.write_bytes(digest, data)
        if docker:
            assert isinstance(image, BuiltImage)
            await asyncio.to_thread(_replace_file, dest / "manifest.json", _docker_manifest(image, names))
        await layout.update(lambda old: _merged(old, entries))


def _merged(old: list[Descriptor], new: tuple[Descriptor, ...]) -> list[Descriptor]:
    """The entries of an existing ``index.json`` with ``new`` added, as BuildKit's
    ``tar=false`` export adds them: an entry of one of their names goes (and an unnamed
    one of their digest), the others stay."""
    def key(entry: Descriptor) -> str:
        return (entry.annotations or {}).get(REF_NAME) or f"@{entry.digest}"

    taken = {key(e) for e in new}
    return [e for e in old if key(e) not in taken] + list(new)


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Sinks: a file (renamed into place when complete) or stdout


async def _to_file(chunks: AsyncIterator[bytes], dest: Path) -> None:
    if await asyncio.to_thread(dest.is_dir):
        raise ExportError(f"dest={dest} is a directory: give a file name for the archive "
                          "(or tar=false to write a layout directory)")
    fd, tmp = await asyncio.to_thread(held_temporary, dest, directory=False)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            async for chunk in chunks:
                await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(f.flush)
            await asyncio.to_thread(os.fsync, f.fileno())  # complete before it is visible
        await asyncio.to_thread(os.chmod, tmp, 0o644)
        await asyncio.to_thread(os.replace, tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


async def _to_stdout(chunks: AsyncIterator[bytes]) -> None:
    out = sys.stdout.buffer
    try:
        async for chunk in chunks:
            await asyncio.to_thread(out.write, chunk)
        await asyncio.to_thread(out.flush)
    except BrokenPipeError:
        raise ExportError("stdout was closed before the archive was written") from None


async def _sink(out: Output, chunks: AsyncIterator[bytes]) -> None:
    try:
        if out.stdout:
            await _to_stdout(chunks)
        else:
            assert out.dest is not None
            await _to_file(chunks, out.dest)
    except OSError as exc:
        raise ExportError(cannot_write(out.dest or "stdout", exc)) \
            from exc
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def export(out: Output, image: Built, store: Store, names: Sequence[str],
                 rootfs: Callable[[Path], Awaitable[None]], work: Path) -> None:
    """Write one output. ``rootfs(dir)`` writes the image's root filesystem into ``dir``."""
    if out.type == "local":
        assert out.dest is not None
        await export_local(out.dest, rootfs)
    elif out.type == "tar":
        root = work / "export-rootfs"
        await rootfs(root)
        await _sink(out, tree_chunks(root))
        await asyncio.to_thread(shutil.rmtree, root, True)
    elif out.loads:
        from .engine import load_image

        if isinstance(image, BuiltIndex):
            raise ExportError("a Docker engine loads one platform's image: build one "
                              "platform for --load (or push the index with --push)")
        await load_image(image_archive(image, store, names, docker=True))
    elif out.type in ("oci", "docker"):
        if out.tar:
            await _sink(out, image_archive(image, store, names, docker=out.type == "docker"))
        else:
            assert out.dest is not None
            try:
                await write_oci_layout(image, store, out.dest, names, out.type == "docker")
            except OSError as exc:
                raise ExportError(cannot_write(out.dest, exc)) from exc
            except LayoutError as exc:  # a full disk's (its cause), or an unreadable index.json
                cause = exc.__cause__
                raise ExportError(cannot_write(out.dest, cause) if isinstance(cause, OSError)
                                  else str(exc)) from exc
