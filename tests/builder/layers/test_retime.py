"""Clamping a layer written without an epoch afterwards gives, byte for byte, the layer
written with that epoch (what lets the build cache keep one layer for every epoch)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from layer_helpers import make_sample_tree

from builder.layers import Changeset, Whiteout, changeset_of_tree, write_tar
from builder.layers.chunked import write_layer
from builder.layers.retime import RetimeError, retime_layer, retime_tar

EPOCH = 1_700_000_000


def _changeset(root: Path) -> Changeset:
    """The sample tree, with times on both sides of the epoch (one too late for ustar's
    octal field, one before 1970: both need pax records) and whiteouts."""
    make_sample_tree(root)
    times = {"etc/hosts": 1000, "bin/tool": EPOCH + 5, "empty": 2**34, "hosts-abs": -5}
    base = changeset_of_tree(root)
    entries = [replace(e, mtime_ns=times[e.path] * 1_000_000_000) if e.path in times else e
               for e in base.entries]
    return Changeset.create(entries, [Whiteout("etc/gone"), Whiteout("tmp", opaque=True)])


def _tar(changeset: Changeset, epoch: int | None) -> bytes:
    buf = io.BytesIO()
    write_tar(changeset, buf, source_date_epoch=epoch)
    return buf.getvalue()


@pytest.mark.parametrize("epoch", [EPOCH, 0, 2**35])
def test_retimed_tar_equals_the_tar_written_with_the_epoch(tmp_path: Path, epoch: int) -> None:
    changeset = _changeset(tmp_path / "t")
    plain = _tar(changeset, None)
    assert b"".join(retime_tar(io.BytesIO(plain), epoch)) == _tar(changeset, epoch)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_retimed_layer_has_the_digests_of_the_layer_written_with_the_epoch(
        tmp_path: Path, compression: str) -> None:
    changeset = _changeset(tmp_path / "t")
    plain, clamped, retimed = io.BytesIO(), io.BytesIO(), io.BytesIO()
    blob = write_layer(changeset, plain, compression=compression)
    want = write_layer(changeset, clamped, source_date_epoch=EPOCH, compression=compression)
    plain.seek(0)
    got = retime_layer(plain, blob.media_type, EPOCH, retimed)
    assert (got.digest, got.diff_id, got.size) == (want.digest, want.diff_id, want.size)
    assert retimed.getvalue() == clamped.getvalue()
    assert got.digest != blob.digest


def test_a_cut_stream_is_an_error(tmp_path: Path) -> None:
    plain = _tar(_changeset(tmp_path / "t"), None)
    with pytest.raises(RetimeError, match="ends inside an entry"):
        b"".join(retime_tar(io.BytesIO(plain[:5000]), EPOCH))
