"""Pack root filesystems into images: an OCI image layout and a ``docker load`` archive.

Written with the standard library only (tarfile, gzip, json, hashlib) and independent of
pybuild's own code, so tests can check pybuild against it and against real clients.

Everything is deterministic: entries sorted, owners 0:0, timestamps ``mtime`` (default 0),
gzip headers without a timestamp. The same rootfs gives the same digests everywhere.

OCI image layout (image-spec ``image-layout.md``)::

    DIR/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    DIR/index.json                 one manifest descriptor per ref (annotation
                                   org.opencontainers.image.ref.name)
    DIR/blobs/sha256/<hex>         manifest, config and layer blobs

docker-archive (what ``docker save`` writes and ``docker load`` reads)::

    manifest.json                  [{"Config": "<hex>.json", "RepoTags": [...],
                                     "Layers": ["<diff-id hex>/layer.tar", ...]}]
    <hex>.json                     the image config
    <diff-id hex>/layer.tar        each layer, uncompressed
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "REF_ANNOTATION",
    "Image",
    "Layer",
    "LayoutImage",
    "busybox_image",
    "make_image",
    "make_layer",
    "read_oci_layout",
    "sha256_digest",
    "tar_directory",
    "tar_files",
    "write_docker_archive",
    "write_oci_index_layout",
    "write_oci_layout",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256_digest(data: bytes) -> str:
    """The OCI digest string ``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _epoch_iso(mtime: int) -> str:
    return dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tarinfo(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_directory(root: Path, *, mtime: int = 0) -> bytes:
    """An uncompressed, deterministic POSIX tar of everything under ``root``.

    Names are relative (``bin/busybox``); directories, regular files and symlinks keep
    their permission bits; owners become 0:0 and every mtime becomes ``mtime``.
    """
    root = Path(root)
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            paths.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    # Depth-first in name order: every directory comes right before its contents.
    paths.sort(key=lambda p: p.split("/"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            full = os.path.join(root, rel)
            st = os.lstat(full)
            info = _tarinfo(rel, mtime)
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise ValueError(f"{full}: only directories, files and symlinks can be packed")
    return buf.getvalue()


def tar_files(files: Mapping[str, bytes], *, mtime: int = 0, mode: int = 0o644) -> bytes:
    """An uncompressed, deterministic tar holding ``files`` (name -> content), sorted by name.

    Parent directories are not added; runtimes create them when unpacking.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = _tarinfo(name, mtime)
            info.mode = mode
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Layer:
    """One image layer: its uncompressed tar and the gzip blob that is pushed."""

    tar: bytes
    blob: bytes
    media_type: str = OCI_LAYER_GZIP

    @property
    def diff_id(self) -> str:
        """Digest of the uncompressed tar (what the image config's rootfs lists)."""
        return sha256_digest(self.tar)

    @property
    def digest(self) -> str:
        """Digest of the compressed blob (what the manifest lists)."""
        return sha256_digest(self.blob)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}


def make_layer(tar: bytes, *, level: int = 6) -> Layer:
    """Compress ``tar`` with gzip (no timestamp, no file name) into a ``Layer``."""
    return Layer(tar=tar, blob=gzip.compress(tar, compresslevel=level, mtime=0))


def _host_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


@dataclass(frozen=True)
class Image:
    """A single-platform OCI image: manifest and config bytes plus its layers."""

    manifest: bytes
    config: bytes
    layers: tuple[Layer, ...]

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    def blobs(self) -> dict[str, bytes]:
        """Every blob the image needs (config and layers, not the manifest), by digest."""
        out = {self.config_digest: self.config}
        for layer in self.layers:
            out[layer.digest] = layer.blob
        return out


def make_image(
    layers: Sequence[Layer],
    *,
    cmd: Sequence[str] = ("sh",),
    env: Sequence[str] = (DEFAULT_PATH,),
    created_by: Iterable[str] | None = None,
    mtime: int = 0,
    architecture: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """Build the config and manifest of an image made of ``layers`` (bottom first)."""
    created = _epoch_iso(mtime)
    steps = list(created_by) if created_by is not None else [
        f"layer {i}" for i in range(len(layers))
    ]
    if len(steps) != len(layers):
        raise ValueError(f"{len(steps)} history entries for {len(layers)} layers")
    config = {
        "architecture": architecture or _host_architecture(),
        "os": "linux",
        "created": created,
        "config": {"Env": list(env), "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": step} for step in steps],
    }
    config_bytes = _canonical_json(config)
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [layer.descriptor() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return Image(manifest=_canonical_json(manifest), config=config_bytes, layers=tuple(layers))


def busybox_image(rootfs: Path, *, mtime: int = 0) -> Image:
    """The image of a busybox rootfs (see ``rootfs.make_busybox_rootfs``): one layer, Cmd sh."""
    layer = make_layer(tar_directory(rootfs, mtime=mtime))
    return make_image([layer], cmd=("sh",), created_by=["ADD busybox rootfs /"], mtime=mtime)


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / _hex(digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.rename(path)
    return digest


def write_oci_layout(image: Image, dest: Path, *, ref: str = "latest") -> Path:
    """Write ``image`` into the OCI image layout ``dest`` under tag ``ref``; return ``dest``.

    An existing layout keeps its other refs; a manifest already tagged ``ref`` is replaced.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for data in (*image.blobs().values(), image.manifest):
        _write_blob(dest, data)
    index_path = dest / "index.json"
    index: dict[str, Any] = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    )
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get(REF_ANNOTATION) != ref
    ]
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": len(image.manifest),
            "annotations": {REF_ANNOTATION: ref},
        }
    )
    index_path.write_bytes(_canonical_json(index))
    return dest


def write_oci_index_layout(images: Mapping[str, Image], dest: Path, *,
                           ref: str = "latest") -> Path:
    """Write a new OCI image layout ``dest`` whose tag ``ref`` is an image index with one
    entry per ``os/arch[/variant]`` of ``images``; return ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entries = []
    for plat, image in images.items():
        for data in (*image.blobs().values(), image.manifest):
            _write_blob(dest, data)
        os_, arch, *variant = plat.split("/")
        platform_doc = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {})}
        entries.append({"mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
                        "size": len(image.manifest), "platform": platform_doc})
    index = _canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    digest = _write_blob(dest, index)
    (dest / "index.json").write_bytes(_canonical_json({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": digest, "size": len(index),
                       "annotations": {REF_ANNOTATION: ref}}]}))
    return dest


@dataclass(frozen=True)
class LayoutImage:
    """An image read back from an OCI layout: raw manifest and blobs, digests verified."""

    manifest_digest: str
    manifest: bytes
    config: bytes
    layer_blobs: tuple[bytes, ...] = field(repr=False)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def layer_digests(self) -> tuple[str, ...]:
        return tuple(sha256_digest(b) for b in self.layer_blobs)


def read_oci_layout(layout: Path, ref: str | None = None) -> LayoutImage:
    """Read the manifest tagged ``ref`` (or the only one) from an OCI layout.

    Every blob read is checked against its digest; a mismatch raises ValueError.
    """
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    manifests = index["manifests"]
    if ref is not None:
        manifests = [m for m in manifests if m.get("annotations", {}).get(REF_ANNOTATION) == ref]
    if len(manifests) != 1:
        raise ValueError(f"{layout}: expected one manifest for ref {ref!r}, found {len(manifests)}")

    def blob(digest: str) -> bytes:
        algorithm, hexpart = digest.split(":", 1)
        data = (layout / "blobs" / algorithm / hexpart).read_bytes()
        if hashlib.new(algorithm, data).hexdigest() != hexpart:
            raise ValueError(f"{layout}: blob {digest} does not match its digest")
        return data

    manifest_digest = manifests[0]["digest"]
    manifest_bytes = blob(manifest_digest)
    manifest = json.loads(manifest_bytes)
    return LayoutImage(
        manifest_digest=manifest_digest,
        manifest=manifest_bytes,
        config=blob(manifest["config"]["digest"]),
        layer_blobs=tuple(blob(d["digest"]) for d in manifest["layers"]),
    )


def write_docker_archive(image: Image, dest: Path, *, repo_tags: Sequence[str]) -> Path:
    """Write ``image`` as a ``docker load``-able tar at ``dest``, tagged ``repo_tags``."""
    config_name = f"{_hex(image.config_digest)}.json"
    layer_names = [f"{_hex(layer.diff_id)}/layer.tar" for layer in image.layers]
    manifest = [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_names}]
    members: dict[str, bytes] = {"manifest.json": json.dumps(manifest).encode(),
                                 config_name: image.config}
    for name, layer in zip(layer_names, image.layers):
        members[name] = layer.tar
    dest = Path(dest)
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = _tarinfo(name, 0)
            info.mode = 0o644
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest
