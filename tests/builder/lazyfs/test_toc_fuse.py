"""A layer's TOC, its tree and its FUSE mount: what the mount shows equals what the
extraction of the same blob makes (content, owners, modes, hard links, symlinks, xattrs,
whiteouts, opaque directories); hostile TOCs are refused before anything is read."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.extracted import _extract
from builder.layers.chunked import write_frames
from builder.lazyfs.fuse import FuseMount
from builder.lazyfs.toc import MAX_MEMBER, TocError, build_toc, parse_toc
from builder.lazyfs.tree import Tree
from builder.sandbox.userns import overlay_xattr
from testkit.tools import require_root
from tests.builder.layers.layer_helpers import hardlink_groups, tree_state

BIG = os.urandom(700_000)


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **kw: object) -> None:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", uid=1000, gid=50, mode=0o640,
             pax_headers={"SCHILY.xattr.user.note": "hello"})
        _add(tf, "opt/deps/big", BIG, mode=0o755, mtime=1_700_000_000)
        _add(tf, "opt/deps/small", b"small\n", mode=0o4755)
        _add(tf, "opt/deps/hard", type=tarfile.LNKTYPE, linkname="opt/deps/small")
        _add(tf, "opt/deps/sym", type=tarfile.SYMTYPE, linkname="../deps/small")
        _add(tf, "opt/deps/.wh.gone")
        _add(tf, "opt/deps/.wh.small")  # the layer writes it too: it stays a file
        _add(tf, "var", type=tarfile.DIRTYPE, mode=0o700, uid=7, gid=8)
        _add(tf, "var/.wh..wh..opq")
        _add(tf, "var/new", b"new\n")
        _add(tf, "dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _add(tf, "run/fifo", type=tarfile.FIFOTYPE, mode=0o600)
    return buf.getvalue()


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blob") / "layer.tar.gz"
    with open(path, "wb") as out:
        write_frames([_layer_tar()], out, workers=0)
    return path


def _toc(blob: Path) -> bytes:
    with open(blob, "rb") as f:
        return build_toc(f, "sha256:" + "0" * 64, blob.stat().st_size)


def test_toc_lists_members_and_entries(blob: Path) -> None:
    toc = parse_toc(_toc(blob), "sha256:" + "0" * 64, blob.stat().st_size)
    assert len(toc.members) > 3  # a chunked layer: several members
    names = [e.name for e in toc.entries]
    assert "opt/deps/big" in names and "var/.wh..wh..opq" in names
    big = next(e for e in toc.entries if e.name == "opt/deps/big")
    raw = _layer_tar()
    assert raw[big.offset:big.offset + big.size] == BIG
    spans = toc.spans(big.offset, big.size)
    assert spans[0].uoff <= big.offset < spans[-1].uoff + spans[-1].ulen
    small = next(e for e in toc.entries if e.name == "etc/passwd")
    assert len(toc.spans(small.offset, small.size)) == 1


def _hostile(blob: Path, change: dict[str, object] | None = None,
             entry: dict[str, object] | None = None, member: list[object] | None = None
             ) -> bytes:
    doc = json.loads(_toc(blob))
    doc.update(change or {})
    if entry is not None:
        doc["entries"].append({"type": "reg", "mode": 0o644, "uid": 0, "gid": 0, "size": 0,
                               "offset": 0, **entry})
    if member is not None:
        doc["members"][0] = member
    return json.dumps(doc).encode()


@pytest.mark.parametrize("case", [
    {"entry": {"name": "../escape"}},
    {"entry": {"name": "a/../../escape"}},
    {"entry": {"name": "/etc/shadow"}},
    {"entry": {"name": "x\0y"}},
    {"entry": {"name": "huge", "size": 1 << 60}},
    {"entry": {"name": "past", "size": 10, "offset": 1 << 40}},
    {"entry": {"name": "negative", "size": 10, "offset": -5}},
    {"entry": {"name": "h", "type": "hard", "link": "../../etc/passwd"}},
    {"entry": {"name": "t", "type": "nope"}},
    {"entry": {"name": "m", "mode": 0o170000}},
    {"member": [0, 1 << 40, 0, 10, "0" * 64]},
    {"member": [5, 10, 0, 10, "0" * 64]},
    {"member": [0, 10, 0, MAX_MEMBER + 1, "0" * 64]},
    {"change": {"layer": "sha256:" + "1" * 64}},
    {"change": {"size": 1}},
    {"change": {"members": []}},
])
def test_hostile_toc_is_refused(blob: Path, case: dict[str, object]) -> None:
    data = _hostile(blob, **case)  # type: ignore[arg-type]
    with pytest.raises(TocError):
        parse_toc(data, "sha256:" + "0" * 64, blob.stat().st_size)


def test_hostile_tree_is_refused(blob: Path) -> None:
    size = blob.stat().st_size
    for entry in ({"name": "link", "type": "hard", "link": "not/there"},
                  {"name": "opt/.wh..", "type": "reg"},
                  {"name": "etc/passwd/under", "type": "reg"}):
        toc = parse_toc(_hostile(blob, entry=entry), "sha256:" + "0" * 64, size)
        with pytest.raises(TocError):
            Tree(toc, "trusted.overlay.opaque")


@pytest.fixture
def mounted(blob: Path, tmp_path: Path) -> Iterator[Path]:
    require_root("a FUSE mount needs root (or root of a user namespace)")
    toc = parse_toc(_toc(blob), "sha256:" + "0" * 64, blob.stat().st_size)
    raw = _layer_tar()
    reads: list[str] = []

    def read_file(node, offset, size):  # type: ignore[no-untyped-def]
        assert node.entry is not None
        reads.append(node.entry.name)
        return raw[node.entry.offset + offset:node.entry.offset + min(offset + size,
                                                                     node.entry.size)]

    target = tmp_path / "mnt"
    target.mkdir()
    mount = FuseMount(Tree(toc, overlay_xattr("opaque")), target, read_file)
    try:
        yield target
    finally:
        mount.close()


def test_mount_equals_extraction(mounted: Path, blob: Path, tmp_path: Path) -> None:
    with open(blob, "rb") as f:
        _extract(f, tmp_path / "extracted")
    extracted = tmp_path / "extracted"
    assert tree_state(mounted) == tree_state(extracted)
    # the times of the entries the layer holds (implied directories and whiteouts get
    # the time of their making in an extraction)
    got, want = tree_state(mounted, mtimes=True), tree_state(extracted, mtimes=True)
    for path in ("etc", "etc/passwd", "opt/deps/big", "opt/deps/small", "var", "var/new",
                 "dev/null", "run/fifo"):
        assert got[path] == want[path], path
    assert hardlink_groups(mounted) == hardlink_groups(extracted) == {
        frozenset({"opt/deps/small", "opt/deps/hard"})}
    assert os.getxattr(mounted / "var", overlay_xattr("opaque")) == b"y"
    assert os.getxattr(mounted / "etc/passwd", "user.note") == b"hello"
    assert (mounted / "opt/deps/big").read_bytes() == BIG
    with open(mounted / "opt/deps/big", "rb") as f:
        f.seek(300_001)
        assert f.read(1000) == BIG[300_001:301_001]
    with pytest.raises(OSError):
        (mounted / "new-file").write_text("read-only")


class _Source:
    """A lazy layer's source for LazyMounts: Range reads of ``blob``, counted, tampered
    where asked."""

    def __init__(self, blob: bytes, tamper_at: int | None = None) -> None:
        self.blob = blob
        self.tamper_at = tamper_at
        self.ranges: list[tuple[int, int]] = []

    async def read_range(self, digest: object, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        data = bytearray(self.blob[start:end + 1])
        if self.tamper_at is not None and start <= self.tamper_at <= end:
            data[self.tamper_at - start] ^= 0xFF
        return bytes(data)


def _lazy_read(blob: Path, tmp_path: Path, source: _Source, name: str) -> bytes:
    """A file of the layer read as a FUSE server thread reads it (the event loop in
    another thread fetches the ranges)."""
    import asyncio
    import threading

    from builder.lazyfs.layers import LazyMounts

    size = blob.stat().st_size
    toc = parse_toc(_toc(blob), "sha256:" + "0" * 64, size)
    tree = Tree(toc, "trusted.overlay.opaque")
    node = tree.lookup(tuple(name.split("/")))
    assert node is not None and node.entry is not None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        mounts = LazyMounts(source, tmp_path / "lazy", progress=None,  # type: ignore[arg-type]
                            opaque_xattr="trusted.overlay.opaque")
        mounts._loop = loop
        from cas import Digest

        return mounts._read(Digest.parse("sha256:" + "0" * 64), toc, node, 0, node.size)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_a_file_read_fetches_only_its_members(blob: Path, tmp_path: Path) -> None:
    source = _Source(blob.read_bytes())
    assert _lazy_read(blob, tmp_path, source, "etc/passwd") == b"root:x:0:0::/root:/bin/sh\n"
    # one member (a chunk of up to 256 KiB, compressed: random bytes grow a little), not
    # the 700 KB layer
    fetched = sum(end + 1 - start for start, end in source.ranges)
    assert len(source.ranges) == 1 and fetched <= (256 << 10) + 4096 < blob.stat().st_size // 2
    # kept: a second read fetches nothing
    assert _lazy_read(blob, tmp_path, source, "etc/passwd").startswith(b"root:")
    assert len(source.ranges) == 1
    assert _lazy_read(blob, tmp_path, source, "opt/deps/big") == BIG
    # only under the place it was given
    assert all(p.is_relative_to(tmp_path / "lazy") for p in tmp_path.rglob("*")
               if p.is_file() and "lazy" in p.parts)


def test_a_member_that_differs_from_its_toc_is_an_io_error(blob: Path, tmp_path: Path) -> None:
    source = _Source(blob.read_bytes(), tamper_at=200_000)
    with pytest.raises(OSError, match="differs from its TOC"):
        _lazy_read(blob, tmp_path, source, "opt/deps/big")
    assert not [p for p in (tmp_path / "lazy").rglob("*") if p.is_file()]  # nothing kept
