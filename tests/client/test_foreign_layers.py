"""Layers pybuild did not write pull digest-correct and dedup across versions: gzip members
without a length (Python's and Go's writers, BGZF without ``BC``, eStargz-style with a
footer), zstd frames, and skopeo's zstd and zstd:chunked; a hostile eStargz footer or
zstd:chunked manifest annotation changes nothing (neither is read, the digest decides)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import RegistryClient
from testkit.images import Layer, make_image, read_oci_layout, tar_files, write_oci_layout
from testkit.tools import require_tool

from .helpers import random_bytes

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _tar(version: int) -> bytes:
    files = {f"app/f{i:02d}.bin": random_bytes(100_000, 40 + i) for i in range(12)}
    if version == 2:
        files["app/f05.bin"] = random_bytes(100_000, 999)
    return tar_files(files)


def _file_chunks(tar: bytes) -> list[bytes]:
    """The tar cut at its entries' starts (512-byte headers), as eStargz cuts per file."""
    cuts = [0]
    pos = 0
    while pos + 512 <= len(tar) and tar[pos:pos + 512] != b"\0" * 512:
        size = int(tar[pos + 124:pos + 136].strip(b"\0 ") or b"0", 8)
        pos += 512 + (size + 511) // 512 * 512
        cuts.append(pos)
    cuts.append(len(tar))
    return [tar[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def _members(tar: bytes) -> bytes:
    return b"".join(gzip.compress(c, mtime=0) for c in _file_chunks(tar))


def _bgzf_without_bc(tar: bytes) -> bytes:
    out = []
    for chunk in _file_chunks(tar):
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = comp.compress(chunk) + comp.flush()
        head = b"\x1f\x8b\x08\x04" + b"\0" * 4 + b"\0\xff" + struct.pack("<H2sHH", 6, b"XY", 2, 1)
        out.append(head + body + struct.pack("<II", zlib.crc32(chunk), len(chunk)))
    return b"".join(out)


def _estargz_hostile_footer(tar: bytes) -> bytes:
    """Members per file, then a footer naming a TOC far past the end of the blob."""
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % (1 << 60)
    footer = (b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + struct.pack("<H", len(extra)) + extra
              + b"\x03\x00" + b"\0" * 8)
    return _members(tar) + footer


def _zstd_frames(tar: bytes) -> bytes:
    comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return b"".join(comp.compress(c) for c in _file_chunks(tar))


ENCODERS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "gzip-members": (_members, "application/vnd.oci.image.layer.v1.tar+gzip"),
    "bgzf-without-bc": (_bgzf_without_bc, "application/vnd.oci.image.layer.v1.tar+gzip"),
    "estargz-hostile-footer": (_estargz_hostile_footer, "application/vnd.oci.image.layer.v1.tar+gzip"),
    "zstd-frames": (_zstd_frames, ZSTD),
}


def _skopeo(*args: str) -> None:
    proc = subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


async def _pull_both(host: str, repo: str, images: ImageStore, client: RegistryClient,
                     layouts: dict[str, Path]) -> list[Digest]:
    """v1 then v2 pulled; returns the layer digest of each, checked byte for byte."""
    out = []
    for tag in ("v1", "v2"):
        result = await copy_image(parse_endpoint(f"{host}/{repo}:{tag}"),
                                  parse_endpoint(f"local:{host}/{repo}:{tag}"), images, client,
                                  Progress("quiet"), CopyOptions())
        layout = read_oci_layout(layouts[tag], tag)
        assert str(result.digest) == layout.manifest_digest
        (layer,) = layout.layer_digests
        assert await images.store.read_bytes(Digest.parse(layer)) == layout.layer_blobs[0]
        out.append(Digest.parse(layer))
    assert (await images.store.fsck()).ok
    return out


async def _shared(images: ImageStore, v1: Digest, v2: Digest) -> float:
    """The fraction of v2's bytes in pieces v1 has too."""
    old = {p.key for p in (await images.store.recipe(v1)).pieces}
    new = await images.store.recipe(v2)
    return sum(p.length for p in new.pieces if p.key in old) / new.size


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
async def test_multi_frame_layers_of_other_writers_pull_and_dedup(
    fmt: str, distribution: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
) -> None:
    encode, media_type = ENCODERS[fmt]
    layouts = {}
    for version in (1, 2):
        tag = f"v{version}"
        tar = _tar(version)
        blob = encode(tar)
        layouts[tag] = write_oci_layout(make_image([Layer(tar, blob, media_type)]),
                                        tmp_path / tag, ref=tag)
        await asyncio.to_thread(_skopeo, "copy", "--dest-tls-verify=false", f"oci:{layouts[tag]}:{tag}",
                                f"docker://{distribution}/foreign/{fmt}:{tag}")
    v1, v2 = await _pull_both(distribution, f"foreign/{fmt}", images, client, layouts)
    # One file of twelve changed: its member (and only it) is new.
    assert await _shared(images, v1, v2) >= 0.8


def _corrupt_chunked_annotations(layout: Path, tag: str) -> None:
    """Point every zstd:chunked annotation of the image at nonsense (a new manifest)."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag:
            continue
        path = layout / "blobs" / entry["digest"].replace(":", "/")
        manifest = json.loads(path.read_bytes())
        for layer in manifest["layers"]:
            notes = layer.setdefault("annotations", {})
            assert any("zstd-chunked" in k for k in notes), notes
            for key in list(notes):
                if "zstd-chunked" in key:
                    notes[key] = "0:999999999999:7:1" if "position" in key else "sha256:" + "0" * 64
        data = json.dumps(manifest).encode()
        digest = Digest.of(data)
        (layout / "blobs" / "sha256" / digest.encoded).write_bytes(data)
        entry["digest"], entry["size"] = str(digest), len(data)
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("compression", ["zstd", "zstd:chunked", "zstd:chunked-hostile", "gzip"])
async def test_layers_skopeo_recompressed_pull_digest_correct(
    compression: str, distribution: str, images: ImageStore, client: RegistryClient,
    tmp_path: Path,
) -> None:
    repo = f"foreign/skopeo-{compression.replace(':', '-')}"
    layouts = {}
    for version in (1, 2):
        tag = f"v{version}"
        source = write_oci_layout(make_image([Layer(_tar(version), _members(_tar(version)))]),
                                  tmp_path / f"src{tag}", ref=tag)
        layouts[tag] = tmp_path / tag
        fmt = compression.removesuffix("-hostile")
        await asyncio.to_thread(_skopeo, "copy", "--dest-compress-format", fmt,
                                f"oci:{source}:{tag}", f"oci:{layouts[tag]}:{tag}")
        if compression.endswith("-hostile"):
            _corrupt_chunked_annotations(layouts[tag], tag)
        await asyncio.to_thread(_skopeo, "copy", "--dest-tls-verify=false", f"oci:{layouts[tag]}:{tag}",
                                f"docker://{distribution}/{repo}:{tag}")
    v1, v2 = await _pull_both(distribution, repo, images, client, layouts)
    if compression.startswith("zstd:chunked"):
        # One frame per file chunk: the unchanged files are shared.
        assert await _shared(images, v1, v2) >= 0.8
