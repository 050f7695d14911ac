"""``docker save`` archives, to and from the cas. A docker archive is a tar::

    manifest.json           [{"Config": "<hex>.json", "RepoTags": ["host/name:tag"],
                              "Layers": ["<hex>/layer.tar", ...]}]
    <hex>.json              the image config
    <hex>/layer.tar         each layer as stored (docker load accepts gzip-compressed layers)
    repositories            {"name": {"tag": "<hex of last layer>"}} for old docker versions

A docker archive holds no manifest: reading one builds a Docker schema 2 manifest (OCI if
a layer is zstd), so config and layer digests survive a round trip but the manifest
digest may not.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from cas import Store

from ..oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
)
from .layouts import (
    DOCKER_LAYER_TAR,
    LayoutError,
    check_destination,
    import_stream,
    source_index,
    unwritable,
)
from .progress import Progress
from .refs import InvalidReference, parse_image_ref

__all__ = ["read_docker_archive", "write_docker_archive"]


def _layer_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return DOCKER_LAYER
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return DOCKER_LAYER_TAR



def _member_label(name: str) -> str:
    """A short label for an archive member (``<hex>/layer.tar``, ``blobs/sha256/<hex>``)."""
    found = re.search(r"[0-9a-f]{12,}", name)
    return found.group(0)[:12] if found else name[-24:]


async def read_docker_archive(path: Path, ref: str | None, store: Store, link: str | None = None,
                              progress: Progress | None = None) -> bytes:
    """Import the image named ``ref`` (or the only image) from a ``docker save`` tar into
    ``store``; returns the manifest (bytes) built for it. ``progress`` shows each layer
    read as a task (``imported``)."""
    import tarfile  # here: a pull or push that goes through no archive does without

    try:
        tar = await asyncio.to_thread(tarfile.open, path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise LayoutError(f"cannot read docker archive {path}: {exc}") from exc
    try:
        def member(name: str) -> Any:
            try:
                f = tar.extractfile(name)
            except KeyError as exc:  # not there, or a link to a name that is not
                raise LayoutError(f"{path}: {name!r}, which manifest.json names, is not in "
                                  "the archive; the archive is incomplete or not a docker "
                                  "save archive") from exc
            if f is None:
                raise LayoutError(f"{path}: {name} is not a file")
            return f

        if "manifest.json" not in await asyncio.to_thread(tar.getnames):
            raise LayoutError(f"{path} is not a docker archive (no manifest.json)")
        try:
            entries = json.loads(await asyncio.to_thread(lambda: member("manifest.json").read()))
        except ValueError as exc:
            raise LayoutError(f"{path}: manifest.json is not JSON ({exc}); the archive is "
                              "damaged or not a docker save archive") from exc
        entry = _pick(entries, ref, path)
        if not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list) \
                or not all(isinstance(name, str) for name in entry["Layers"]):
            raise LayoutError(f"{path}: an image in manifest.json needs a Config file name and "
                              "a Layers list of file names; the archive is damaged or not a "
                              "docker save archive")
        config = await asyncio.to_thread(lambda: member(entry["Config"]).read())
        config_info = await store.put(config, link=link)
        layers = []
        for name in entry["Layers"]:
            f = await asyncio.to_thread(member, name)
            head: list[bytes] = []

            def read(n: int, f: Any = f, head: list[bytes] = head) -> bytes:
                block: bytes = f.read(n)
                if not head:
                    head.append(block[:4])
                return block

            size = (await asyncio.to_thread(tar.getmember, name)).size
            info = await import_stream(store, read, None, link, progress, f"{path}:{name}",
                                 _member_label(name), size)
            layers.append(Descriptor(_layer_type(head[0] if head else b""), info.digest, info.size))
    finally:
        await asyncio.to_thread(tar.close)
    oci = any(d.media_type == OCI_LAYER_ZSTD for d in layers)
    manifest = Manifest(
        config=Descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config_info.digest, len(config)),
        layers=tuple(layers),
        media_type=OCI_MANIFEST if oci else DOCKER_MANIFEST,
    )
    return json.dumps(manifest.to_json(), indent=3).encode()



def _pick(entries: Any, ref: str | None, path: Path) -> dict[str, Any]:
    if not isinstance(entries, list) or not entries:
        raise LayoutError(f"{path}: manifest.json lists no images")
    if not all(isinstance(e, dict) for e in entries):
        raise LayoutError(f"{path}: manifest.json is not a list of images (objects); the "
                          "archive is damaged or not a docker save archive")
    listed = ", ".join(", ".join(_tags(e)) or f"@{i} (untagged)"
                       for i, e in enumerate(entries))
    place = source_index(ref)
    if ref is None and len(entries) == 1:
        return dict(entries[0])
    if ref is None:
        raise LayoutError(f"{path} holds {len(entries)} images ({listed}); name one "
                          "(docker-archive:FILE:REF, or docker-archive:FILE:@N for the N-th from 0)")
    if place is not None and place < len(entries):
        return dict(entries[place])
    for entry in entries:
        if place is None and any(_normalized(tag) == ref for tag in _tags(entry)):
            return dict(entry)
    raise LayoutError(f"{path} has no image {ref} (it has: {listed})")


def _tags(entry: dict[str, Any]) -> list[str]:
    """The names an archive entry's RepoTags gives it (what is not a list of strings: none)."""
    tags = entry.get("RepoTags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _normalized(tag: Any) -> str:
    """A RepoTags entry as :func:`parse_image_ref` spells it: ``docker save`` writes the
    short form Docker shows (``busybox:latest``), the name asked for is normalised
    (``docker.io/library/busybox:latest``), and both name the same image."""
    try:
        return str(parse_image_ref(str(tag)))
    except InvalidReference:
        return str(tag)



async def write_docker_archive(path: Path, ref: str | None, manifest: Manifest, store: Store,
                               progress: Progress | None = None) -> None:
    """Write ``manifest``'s image as a ``docker load``-able tar (replacing ``path``). It is
    written to ``<path>.tmp`` and renamed: a failed write leaves neither a partial
    archive nor the temporary file. ``progress`` shows each blob written as a task
    (``exported``)."""
    check_destination("docker-archive", path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        await _write_archive(path, tmp, ref, manifest, store, progress)
    except BaseException as exc:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        if isinstance(exc, (IsADirectoryError, NotADirectoryError, FileNotFoundError)):
            raise LayoutError(f"cannot write docker-archive:{path}: {exc.strerror}: name a file in "
                              "a directory that exists") from exc
        layout_error = unwritable(exc, f"docker-archive:{path}")
        if layout_error is not None:
            raise layout_error from exc
        raise


async def _write_archive(path: Path, tmp: Path, ref: str | None, manifest: Manifest, store: Store,
                         progress: Progress | None) -> None:
    import tarfile

    config_name = f"{manifest.config.digest.encoded}.json"
    layer_names = [f"{d.digest.encoded}/layer.tar" for d in manifest.layers]
    index = [{"Config": config_name, "RepoTags": [ref] if ref else [], "Layers": layer_names}]
    f = await asyncio.to_thread(open, tmp, "wb")
    try:
        async def add(name: str, size: int, chunks: Any, key: str | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 0
            await asyncio.to_thread(f.write, info.tobuf(format=tarfile.PAX_FORMAT))
            written = 0
            async for chunk in chunks:
                written += len(chunk)
                await asyncio.to_thread(f.write, chunk)
                if progress is not None and key is not None:
                    progress.advance(key, len(chunk))
            if written != size:
                raise LayoutError(f"{name}: wrote {written} bytes, expected {size}")
            if size % 512:
                await asyncio.to_thread(f.write, b"\0" * (512 - size % 512))

        async def once(data: bytes) -> Any:
            yield data

        for desc, name in ((manifest.config, config_name), *zip(manifest.layers, layer_names)):
            info = await store.stat(desc.digest)
            if info is None:
                raise LayoutError(f"blob {desc.digest} is not in the local store")
            key = str(desc.digest)
            if progress is not None:
                progress.start(key, desc.digest.encoded[:12], info.size)
            try:
                await add(name, info.size, store.read(desc.digest), key)
            except BaseException as exc:
                if progress is not None:
                    progress.fail(key, exc)
                raise
            if progress is not None:
                progress.finish(key, "exported")
        body = json.dumps(index).encode()
        await add("manifest.json", len(body), once(body))
        if ref and manifest.layers:
            name, _, tag = ref.rpartition(":")
            repos = json.dumps({name: {tag: manifest.layers[-1].digest.encoded}}).encode()
            await add("repositories", len(repos), once(repos))
        await asyncio.to_thread(f.write, b"\0" * 1024)
        await asyncio.to_thread(f.flush)
        await asyncio.to_thread(os.fsync, f.fileno())  # on disk before its name is
    finally:
        await asyncio.to_thread(f.close)
    await asyncio.to_thread(os.replace, tmp, path)
