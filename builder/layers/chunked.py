"""The chunked-frame layer writer: a tar stream as concatenated, independently
compressed frames (DESIGN.md, "Layers as chunked frames").

The uncompressed tar stream is cut by content-defined chunking (FastCDC, compiled
``pyfastcdc``); each chunk becomes one gzip member (:func:`cas.frames.gzip_member`, the
default: every client reads gzip) or one zstd frame (:func:`cas.frames.zstd_frame`); the
frames are concatenated. Any gzip or zstd decoder reads the result as one stream equal to
the tar, and the same file content in two layers yields the same frames, so the CAS, the
registry and the client's piece store keep it once.

**Chunk size.** :data:`DEFAULT_AVG_CHUNK` is 64 KiB (FastCDC min 16 KiB, max 256 KiB).
Measured on ~1,000 files of mixed size (exponential, mean 16 KiB; text and random)
where 2% of the files change: the share of frames the two layers have in common is 97%
at 16 KiB, 95% at 32 KiB, 91% at 64 KiB, 84% at 128 KiB, 71% at 256 KiB and 33% at 1 MiB,
while the gzip layer is 4.5%, 3.3%, 1.9% and 0.9% larger than with 1 MiB chunks for
16-128 KiB (deflate's window is 32 KiB anyway). 64 KiB keeps nine frames in ten shared
for a small cost in size and half as many pieces (CAS entries, recipe rows, range
requests) as 32 KiB. zstd loses more by small frames (+15% at 64 KiB against 1 MiB
frames on that data, its window being larger): pass ``avg_size`` to trade.
tests/builder/layers/test_chunked.py checks the dedup claim.

**Incompressible chunks.** deflate gains nothing on data that is already compressed or
random (archives, images, binaries' packed sections) yet runs at ~30 MB/s there, against
~300 MB/s for copying it into stored blocks. Before compressing a gzip frame, eight
256-byte samples spread over the chunk are deflated at level 1; when they do not shrink
(:data:`INCOMPRESSIBLE_RATIO`) the frame is written with stored blocks (level 0), which
every gzip reader reads. The choice depends only on the chunk's bytes, so layers stay
deterministic; a chunk mixing random and compressible bytes may be stored when the
samples only hit the random part (a few per cent of size, never of correctness). zstd
detects incompressible blocks itself.

**Parallelism and determinism.** Frames are compressed in a thread pool (zlib and zstd
release the GIL), in batches of about 512 KiB of chunks, and written in chunk order, so
the output bytes do not depend on the number of threads or on scheduling. At most
``2 * workers`` batches are in flight, so memory stays bounded by about
``4 * workers * (512 KiB + max_chunk)`` (chunks and their frames) plus FastCDC's buffer.
Compressed bytes are as reproducible as the compression libraries: the same zlib / zstd versions
and levels give the same digest on every machine; the ``diff_id`` never depends on them.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import pyfastcdc

from cas.digest import Digest, new_hasher
from cas.frames import gzip_member, zstd_frame

from .changeset import Changeset
from .tarwriter import iter_tar

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_AVG_CHUNK",
    "INCOMPRESSIBLE_RATIO",
    "MEDIA_TYPE_GZIP",
    "MEDIA_TYPE_TAR",
    "MEDIA_TYPE_ZSTD",
    "LayerBlob",
    "gzip_frame",
    "looks_incompressible",
    "write_frames",
    "write_layer",
    "write_layer_file",
]

MEDIA_TYPE_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DEFAULT_AVG_CHUNK = 64 * 1024

# Chunks travel to the compressing threads, and frames come back, in batches of about
# this many bytes: every hand-over and every hash update releases and retakes the GIL,
# and per 64 KiB chunk those waits cost more than the hashing itself.
_BATCH_BYTES = 512 << 10
_HASH_BACKLOG = 2

# A gzip frame is stored uncompressed when its samples deflate to at least this share
# of their size (random bytes give ~1.01, English text ~0.5, tar headers far less).
INCOMPRESSIBLE_RATIO = 0.97
_SAMPLES = 8
_SAMPLE_SIZE = 256


def looks_incompressible(data: bytes) -> bool:
    """True when samples of ``data`` do not shrink under deflate (a deterministic guess:
    it depends on the bytes only). Chunks under 16 KiB are never guessed incompressible."""
    n = len(data)
    if n < 16 * 1024:
        return False
    step = (n - _SAMPLE_SIZE) // (_SAMPLES - 1)
    sample = b"".join(data[i * step:i * step + _SAMPLE_SIZE] for i in range(_SAMPLES))
    return len(zlib.compress(sample, 1)) >= INCOMPRESSIBLE_RATIO * len(sample)


def gzip_frame(data: bytes, level: int) -> bytes:
    """:func:`cas.frames.gzip_member` at ``level``, or with stored blocks when the chunk
    :func:`looks_incompressible` (see the module's docstring)."""
    return gzip_member(data, 0 if level and looks_incompressible(data) else level)


# compression -> (frame function, default level, media type)
COMPRESSIONS: dict[str, tuple[Callable[[bytes, int], bytes], int, str]] = {
    "gzip": (gzip_frame, 6, MEDIA_TYPE_GZIP),
    "zstd": (zstd_frame, 3, MEDIA_TYPE_ZSTD),
}


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A written layer: what its descriptor and the image config's ``diff_ids`` need.

    ``frame_sizes`` are the compressed sizes of the frames in blob order (their sum is
    ``size``); ``frame_keys`` are the BLAKE3 hex digests of each frame's bytes — the keys
    the CAS gives these frames as pieces (it cuts such a blob at frame ends, joining a
    frame under ``ChunkParams.frame_min`` with the next), so a pusher can ask which
    pieces a store or registry already holds before sending anything.
    """

    digest: Digest
    size: int
    diff_id: Digest
    uncompressed_size: int
    media_type: str
    frame_sizes: tuple[int, ...]
    frame_keys: tuple[str, ...]


class _IterReader:
    """A read-only file over an iterator of byte strings (what FastCDC pulls from)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")

    def readinto(self, dest: memoryview) -> int:
        n = 0
        while n < len(dest):
            if not self._buf:
                nxt = next(self._it, None)
                if nxt is None:
                    break
                self._buf = memoryview(nxt)
                continue
            take = min(len(dest) - n, len(self._buf))
            dest[n:n + take] = self._buf[:take]
            self._buf = self._buf[take:]
            n += take
        return n


def _chunker(avg_size: int) -> pyfastcdc.FastCDC:
    return pyfastcdc.FastCDC(avg_size=avg_size, min_size=avg_size // 4, max_size=avg_size * 4)


def write_frames(tar_stream: Iterable[bytes], out: BinaryIO, *, compression: str = "gzip",
                 level: int | None = None, avg_size: int = DEFAULT_AVG_CHUNK,
                 workers: int | None = None) -> LayerBlob:
    """Chunk, compress and write the tar stream ``tar_stream`` to ``out``.

    ``compression`` is ``"gzip"`` or ``"zstd"``; ``level`` defaults to 6 / 3. ``workers``
    threads compress (default: the CPU count, at most 8; 0 compresses inline); one more
    thread computes the two SHA-256 digests. The bytes written do not depend on
    ``workers``.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}: use one of {sorted(COMPRESSIONS)}")
    frame, default_level, media_type = COMPRESSIONS[compression]
    lvl = default_level if level is None else level
    n_workers = min(8, os.cpu_count() or 1) if workers is None else workers

    diff_hash = new_hasher("sha256")
    blob_hash = new_hasher("sha256")
    sizes: list[int] = []
    keys: list[str] = []
    total_in = 0

    def make(chunks: list[bytes]) -> tuple[bytes, list[int], list[str]]:
        # A batch of chunks -> their frames, joined, with sizes and keys. Keys are
        # computed here, in the compressing thread, off the loop below.
        frames = [frame(c, lvl) for c in chunks]
        return (b"".join(frames), [len(f) for f in frames],
                [blake3.blake3(f).hexdigest() for f in frames])

    # Both SHA-256 digests are updated on one more thread, in submission order (one
    # worker), beside the chunking loop; at most _HASH_BACKLOG updates wait.
    lane = ThreadPoolExecutor(1, thread_name_prefix="layer-hash")
    hashing: deque[Future[None]] = deque()

    def hash_later(hasher: Any, data: bytes) -> None:
        hashing.append(lane.submit(hasher.update, data))
        while len(hashing) > _HASH_BACKLOG:
            hashing.popleft().result()

    def emit(made: tuple[bytes, list[int], list[str]]) -> None:
        data, frame_sizes, frame_keys = made
        hash_later(blob_hash, data)
        out.write(data)
        sizes.extend(frame_sizes)
        keys.extend(frame_keys)

    def batched() -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        size = 0
        for chunk in _chunker(avg_size).cut_stream(_IterReader(tar_stream)):
            batch.append(bytes(chunk.data))  # a copy: the chunker reuses its buffer
            size += len(chunk.data)
            if size >= _BATCH_BYTES:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="layer-frames") if n_workers else None
    pending: deque[Future[tuple[bytes, list[int], list[str]]]] = deque()
    try:
        for batch in batched():
            joined = b"".join(batch)
            hash_later(diff_hash, joined)
            total_in += len(joined)
            if pool is None:
                emit(make(batch))
                continue
            pending.append(pool.submit(make, batch))
            while len(pending) >= 2 * n_workers:
                emit(pending.popleft().result())
        while pending:
            emit(pending.popleft().result())
        while hashing:
            hashing.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=True)
        lane.shutdown(wait=True)
    return LayerBlob(
        digest=Digest("sha256", blob_hash.hexdigest()),
        size=sum(sizes),
        diff_id=Digest("sha256", diff_hash.hexdigest()),
        uncompressed_size=total_in,
        media_type=media_type,
        frame_sizes=tuple(sizes),
        frame_keys=tuple(keys),
    )


def write_layer(changeset: Changeset, out: BinaryIO, *, source_date_epoch: int | None = None,
                compression: str = "gzip", level: int | None = None,
                avg_size: int = DEFAULT_AVG_CHUNK, workers: int | None = None) -> LayerBlob:
    """The deterministic tar of ``changeset`` (see :mod:`.tarwriter`) as a chunked-frame
    layer written to ``out``."""
    return write_frames(iter_tar(changeset, source_date_epoch=source_date_epoch), out,
                        compression=compression, level=level, avg_size=avg_size,
                        workers=workers)


def write_layer_file(changeset: Changeset, path: Path | str, **options: object) -> LayerBlob:
    """:func:`write_layer` into the file ``path``, atomically (a temporary file in the
    same directory, renamed into place only when complete)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".layer-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            blob = write_layer(changeset, f, **options)  # type: ignore[arg-type]
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return blob
