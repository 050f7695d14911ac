"""Where a built image goes: ``type=oci`` (an OCI image layout directory),
``type=docker`` (a ``docker load`` archive), ``type=local`` (the final root filesystem).

``--output`` values are parsed as BuildKit's (``type=oci,dest=DIR``); ``-t`` names go into
the OCI index (``org.opencontainers.image.ref.name``) and the archive's ``RepoTags``.
Blobs are read from the CAS; files are written under ``dest`` only.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cas import Digest, Store
from registry.oci import Descriptor, Index

from .image import BuiltImage

__all__ = ["Output", "OutputError", "parse_output", "write_docker_archive", "write_oci_layout"]

REF_NAME = "org.opencontainers.image.ref.name"


class OutputError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Output:
    type: str
    dest: Path


def parse_output(text: str) -> Output:
    """``type=oci,dest=DIR`` (also ``type=local,dest=DIR``, ``type=docker,dest=FILE``)."""
    fields = dict(f.partition("=")[::2] for f in text.split(",") if f)
    kind = fields.pop("type", "local")
    dest = fields.pop("dest", None)
    if kind not in ("oci", "docker", "local"):
        raise OutputError(f"--output type={kind}: use oci, docker or local")
    if not dest:
        raise OutputError(f"--output {text!r}: dest= is required")
    if fields:
        raise OutputError(f"--output: unknown option {min(fields)!r}")
    return Output(kind, Path(dest))


async def _blob_to(store: Store, digest: Digest, path: Path) -> None:
    if not path.exists():
        await store.export(digest, path)


async def write_oci_layout(image: BuiltImage, store: Store, dest: Path,
                           tags: list[str]) -> None:
    """An OCI image layout at ``dest`` (created; an existing layout gains the image)."""
    blobs = dest / "blobs" / "sha256"
    await asyncio.to_thread(blobs.mkdir, parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for layer in image.manifest.layers:
        await _blob_to(store, layer.digest, blobs / layer.digest.encoded)
    (blobs / image.manifest.config.digest.encoded).write_bytes(image.config_bytes)
    (blobs / image.digest.encoded).write_bytes(image.manifest_bytes)
    desc = image.manifest_descriptor
    names = [t.rsplit(":", 1)[-1] if ":" in t.rsplit("/", 1)[-1] else "latest" for t in tags]
    entries = [Descriptor(desc.media_type, desc.digest, desc.size,
                          annotations={REF_NAME: n}) for n in names] or [desc]
    (dest / "index.json").write_bytes(Index(tuple(entries)).to_bytes())


async def write_docker_archive(image: BuiltImage, store: Store, dest: Path,
                               tags: list[str], work: Path) -> None:
    """A tar that ``docker load`` accepts: manifest.json + config + layer blobs (also an
    OCI layout inside, as Docker 25 writes)."""
    layout = work / "docker-archive"
    await write_oci_layout(image, store, layout, [])
    repo_tags = [t if ":" in t.rsplit("/", 1)[-1] else f"{t}:latest" for t in tags]
    manifest = [{
        "Config": f"blobs/sha256/{image.manifest.config.digest.encoded}",
        "RepoTags": repo_tags or None,
        "Layers": [f"blobs/sha256/{d.digest.encoded}" for d in image.manifest.layers],
    }]

    def write() -> None:
        tmp = dest.with_name(dest.name + ".tmp")
        try:
            write_tar(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)  # nothing half-written stays (a full disk)
            raise
        os.replace(tmp, dest)

    def write_tar(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
            for root, _dirs, files in sorted(os.walk(layout)):
                for fname in sorted(files):
                    p = Path(root, fname)
                    tf.add(p, arcname=str(p.relative_to(layout)), recursive=False)
            add_bytes("manifest.json", json.dumps(manifest).encode())

    await asyncio.to_thread(write)
