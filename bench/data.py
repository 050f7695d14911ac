"""Benchmark data: incompressible, non-repeating and reproducible, generated fast.

Bytes come from BLAKE3's extendable output (several GB/s): unlike ``os.urandom`` (~150
MB/s here) generating 1 GiB takes a fraction of a second, and unlike a repeated buffer it
gives a deduplicating store nothing to share, so pybuild and the peer store the same work.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import blake3

__all__ = ["chunked_layer", "pseudo_random", "write_pseudo_random"]

MiB = 1 << 20


def pseudo_random(size: int, *, seed: bytes, offset: int = 0) -> bytes:
    """``size`` bytes of the BLAKE3 output stream of ``seed``, starting at ``offset``."""
    return blake3.blake3(seed).digest(length=size, seek=offset)


def write_pseudo_random(path: Path, size: int, *, seed: bytes) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; return their ``sha256:`` digest."""
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, 64 * MiB):
            chunk = pseudo_random(min(64 * MiB, size - offset), seed=seed, offset=offset)
            sha.update(chunk)
            f.write(chunk)
    return "sha256:" + sha.hexdigest()


def chunked_layer(tar: bytes):  # type: ignore[no-untyped-def]
    """``tar`` as pybuild's chunked-frame gzip layer (one gzip member per content-defined
    chunk, what ``pybuild build`` writes), as a ``testkit.images.Layer``."""
    from builder.layers.chunked import write_frames
    from testkit.images import Layer

    out = io.BytesIO()
    write_frames([tar], out)
    return Layer(tar=tar, blob=out.getvalue())
