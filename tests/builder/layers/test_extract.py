"""Applying layers: round trips, whiteouts, and hostile archives that must stay inside."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layer_helpers import hardlink_groups, tree_state

from builder.layers import (
    LayerError,
    LayerFormatError,
    UnsafeLayerEntry,
    apply_layer,
    changeset_of_tree,
    write_layer,
    write_tar,
)


def archive(*members: tuple[str, str, object]) -> bytes:
    """A tar from (type, name, arg): ('file', name, bytes), ('dir', name, None),
    ('sym', name, target), ('hard', name, target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, arg in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1000
            if kind == "file":
                data = arg if isinstance(arg, bytes) else b""
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(arg)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(arg)
            tf.addfile(info)
    return buf.getvalue()


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    """(rootfs, outside): outside holds a secret that no layer may touch."""
    root = tmp_path / "rootfs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    return root, outside


def outside_untouched(outside: Path) -> bool:
    return (sorted(p.name for p in outside.iterdir()) == ["secret"]
            and (outside / "secret").read_text() == "keep me"
            and os.lstat(outside / "secret").st_nlink == 1)


# -- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "zstd", None])
def test_round_trip_preserves_everything(sample_tree: Path, tmp_path: Path,
                                         compression: str | None) -> None:
    buf = io.BytesIO()
    if compression is None:
        write_tar(changeset_of_tree(sample_tree), buf)
    else:
        write_layer(changeset_of_tree(sample_tree), buf, compression=compression)
    out = tmp_path / "out"
    out.mkdir()
    report = apply_layer(io.BytesIO(buf.getvalue()), out)
    assert report.skipped == ()
    assert tree_state(out, mtimes=True) == tree_state(sample_tree, mtimes=True)
    assert hardlink_groups(out) == {frozenset({"bin/tool", "bin/tool-link"})}


def test_apply_from_a_path(sample_tree: Path, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    with open(blob, "wb") as f:
        write_layer(changeset_of_tree(sample_tree), f)
    out = tmp_path / "out"
    out.mkdir()
    apply_layer(blob, out)
    assert tree_state(out) == tree_state(sample_tree)


def test_multi_member_gzip_and_multi_frame_zstd_from_other_writers(tmp_path: Path) -> None:
    tar = archive(("file", "a", b"A" * 1000), ("file", "b", b"B" * 1000))
    half = len(tar) // 2
    gz = gzip.compress(tar[:half]) + gzip.compress(tar[half:])
    zs = zstandard.ZstdCompressor().compress(tar[:half]) + zstandard.ZstdCompressor().compress(tar[half:])
    for i, blob in enumerate((gz, zs)):
        out = tmp_path / f"o{i}"
        out.mkdir()
        apply_layer(io.BytesIO(blob), out)
        assert (out / "a").read_bytes() == b"A" * 1000 and (out / "b").read_bytes() == b"B" * 1000


# -- whiteouts ---------------------------------------------------------------------------

def lower(root: Path) -> None:
    (root / "keep").write_text("k")
    (root / "gone").write_text("g")
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "old").write_text("o")
    (root / "dir" / "sub" / "deep").write_text("d")
    (root / "gonedir" / "x").mkdir(parents=True)


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_parents_a_layer_does_not_list_are_0755_whatever_the_umask(jail: tuple[Path, Path],
                                                                    umask: int) -> None:
    """An archive (ADD) or layer that names ``a/b/c/f`` alone gets ``a``, ``a/b`` and
    ``a/b/c`` as BuildKit makes them, 0755: not the mode the umask of the machine that
    builds would give, which would change the layer's digest from machine to machine."""
    root, _ = jail
    old = os.umask(umask)
    try:
        apply_layer(io.BytesIO(archive(("file", "a/b/c/f", b"x"))), root)
    finally:
        os.umask(old)
    for d in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE(os.lstat(root / d).st_mode) == 0o755, d


def test_whiteouts_remove_lower_paths(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    lower(root)
    report = apply_layer(io.BytesIO(archive(
        ("file", ".wh.gone", b""), ("file", ".wh.gonedir", b""), ("file", ".wh.missing", b""),
    )), root)
    assert report.whiteouts == 3
    assert sorted(p.name for p in root.iterdir()) == ["dir", "keep"]


def test_whiteouts_are_reported_as_marks_in_layer_order(jail: tuple[Path, Path]) -> None:
    # An extracted lower layer records each whiteout as a mark of its own (builder.extracted):
    # the applying pass reports them, aufs metadata aside.
    root, _ = jail
    lower(root)
    marks: list[tuple[list[str], bool]] = []
    apply_layer(io.BytesIO(archive(
        ("file", ".wh.gone", b""), ("dir", "dir", None), ("file", "dir/.wh..wh..opq", b""),
        ("file", "dir/.wh.sub", b""), ("file", ".wh..wh.plnk.1", b""),
    )), root, marks=marks)
    assert marks == [(["gone"], False), (["dir"], True), (["dir", "sub"], False)]


def test_opaque_whiteout_hides_lower_but_not_same_layer_in_any_order(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    lower(root)
    # marker after the layer's own entries: they must survive
    apply_layer(io.BytesIO(archive(
        ("dir", "dir", None), ("dir", "dir/sub", None), ("file", "dir/sub/new", b"n"),
        ("file", "dir/mine", b"m"), ("file", "dir/.wh..wh..opq", b""),
    )), root)
    assert tree_state(root).keys() == {"keep", "gone", "gonedir", "gonedir/x", "dir",
                                       "dir/sub", "dir/sub/new", "dir/mine"}


def test_whiteout_does_not_hide_same_layer_file(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    apply_layer(io.BytesIO(archive(("file", "f", b"new"), ("file", ".wh.f", b""))), root)
    assert (root / "f").read_text() == "new"


def test_type_changes_replace_lower_entries(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    lower(root)
    apply_layer(io.BytesIO(archive(("file", "dir", b"now a file"), ("dir", "keep", None),
                                   ("sym", "gonedir", "keep"))), root)
    assert (root / "dir").read_text() == "now a file"
    assert (root / "keep").is_dir()
    assert os.readlink(root / "gonedir") == "keep"


# -- hostile archives --------------------------------------------------------------------

def test_dotdot_is_refused(jail: tuple[Path, Path]) -> None:
    root, outside = jail
    with pytest.raises(UnsafeLayerEntry, match=r"'\.\./outside/evil'.*'\.\.' path component"):
        apply_layer(io.BytesIO(archive(("file", "../outside/evil", b"x"))), root)
    with pytest.raises(UnsafeLayerEntry, match="a/../../x"):
        apply_layer(io.BytesIO(archive(("file", "a/../../x", b"x"))), root)
    assert outside_untouched(outside)


def test_absolute_names_land_inside(jail: tuple[Path, Path]) -> None:
    root, outside = jail
    apply_layer(io.BytesIO(archive(("file", f"{outside}/evil", b"x"))), root)
    assert outside_untouched(outside)
    assert (root / str(outside).lstrip("/") / "evil").read_bytes() == b"x"


@pytest.mark.parametrize("target", ["ABS", "../../../../../../../../ABS", "/../../ABS"])
def test_writes_through_escaping_symlinks_stay_inside(jail: tuple[Path, Path], target: str) -> None:
    root, outside = jail
    target = target.replace("ABS", str(outside).lstrip("/") if not target.startswith("ABS")
                            else str(outside))
    apply_layer(io.BytesIO(archive(
        ("sym", "esc", target),
        ("file", "esc/pwned", b"x"),
        ("dir", "esc/newdir", None),
        ("file", "esc/.wh.secret", b""),
        ("file", "esc/.wh..wh..opq", b""),
    )), root)
    assert outside_untouched(outside)
    # resolved as if chrooted: the writes happened at <root>/<outside path>
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"


def test_a_file_over_a_symlink_replaces_the_symlink(jail: tuple[Path, Path]) -> None:
    root, outside = jail
    apply_layer(io.BytesIO(archive(("sym", "s", str(outside / "secret")),
                                   ("file", "s", b"overwrite"),
                                   ("sym", "d", str(outside)), ("dir", "d", None))), root)
    assert outside_untouched(outside)
    assert (root / "s").read_bytes() == b"overwrite" and not (root / "s").is_symlink()
    assert (root / "d").is_dir() and not (root / "d").is_symlink()


def test_hard_links_cannot_reach_outside(jail: tuple[Path, Path]) -> None:
    root, outside = jail
    with pytest.raises(UnsafeLayerEntry, match="'h'"):
        apply_layer(io.BytesIO(archive(("hard", "h", "../outside/secret"))), root)
    with pytest.raises(LayerFormatError, match="hard link target .* does not exist"):
        apply_layer(io.BytesIO(archive(("sym", "s", str(outside)),
                                       ("hard", "h2", "s/secret"))), root)
    with pytest.raises(LayerFormatError, match="does not exist"):
        apply_layer(io.BytesIO(archive(("hard", "h3", str(outside / "secret")))), root)
    assert outside_untouched(outside)
    with pytest.raises(UnsafeLayerEntry, match="hard link to a directory"):
        apply_layer(io.BytesIO(archive(("dir", "dd", None), ("hard", "h4", "dd"))), root)


def test_hard_link_to_a_symlink_links_the_symlink_itself(jail: tuple[Path, Path]) -> None:
    root, outside = jail
    apply_layer(io.BytesIO(archive(("sym", "s", str(outside / "secret")), ("hard", "h", "s"))), root)
    assert os.path.samestat(os.lstat(root / "h"), os.lstat(root / "s"))
    assert outside_untouched(outside)


def test_symlink_loops_are_refused(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    with pytest.raises(UnsafeLayerEntry, match="symlinks on its path"):
        apply_layer(io.BytesIO(archive(("sym", "a", "b"), ("sym", "b", "a"),
                                       ("file", "a/x", b""))), root)


def test_bad_whiteout_names_are_refused(jail: tuple[Path, Path]) -> None:
    root, outside = jail
    with pytest.raises(UnsafeLayerEntry, match=r"\.wh\.\."):
        apply_layer(io.BytesIO(archive(("file", "sub/.wh...", b""))), root)
    assert outside_untouched(outside)


@pytest.mark.parametrize("blob", [b"not a layer at all" * 100, gzip.compress(b"x" * 10000)[:-20],
                                  b"\x28\xb5\x2f\xfd" + b"\0" * 50,
                                  # a gzip header, then no valid deflate block
                                  b"\x1f\x8b\x08\x00\0\0\0\0\0\xff" + b"\xff" * 64])
def test_garbage_is_a_format_error(jail: tuple[Path, Path], blob: bytes) -> None:
    root, _ = jail
    with pytest.raises(LayerFormatError):
        apply_layer(io.BytesIO(blob), root)


@pytest.mark.parametrize("last", [("sym", "b", "b"), ("file", "b", b"a"),
                                  ("sym", "b", "../outside")])
def test_a_parent_replaced_after_a_directory_entry(jail: tuple[Path, Path], last: tuple) -> None:
    """Directory metadata is set at the end: by then the path may run through a symlink."""
    root, outside = jail
    (outside / "a").mkdir()
    before = os.stat(outside / "a")
    apply_layer(io.BytesIO(archive(("dir", "b/a", None), last)), root)
    assert sorted(p.name for p in outside.iterdir()) == ["a", "secret"]
    after = os.stat(outside / "a")
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.path.islink(root / "b") or (root / "b").is_file()


@pytest.mark.parametrize("turn", [
    ("sym", "a", "../outside"),  # the directory becomes a link out
    ("file", "a", b"x"),  # ... or a file (the next entry cannot go below it)
])
def test_a_parent_used_then_replaced_is_resolved_again(jail: tuple[Path, Path], turn: tuple) -> None:
    """Entries resolve their parent once and reuse it for the entries after them; an
    entry that replaces that parent makes the next ones resolve it anew, inside the root."""
    root, outside = jail
    layer = archive(("dir", "a", None), ("file", "a/one", b"1"), turn, ("file", "a/two", b"2"))
    with contextlib.suppress(LayerError):
        apply_layer(io.BytesIO(layer), root)
    assert outside_untouched(outside)
    if turn[0] == "sym":
        assert (root / "outside" / "two").read_bytes() == b"2"  # the link, scoped to the root


_names = st.lists(st.sampled_from(["a", "b", "..", ".", "", "c", ".wh.a", ".wh..wh..opq",
                                   "OUT"]), min_size=1, max_size=4).map("/".join)
_members = st.lists(st.tuples(st.sampled_from(["file", "dir", "sym", "hard"]), _names, _names),
                    max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=_members, absolute=st.booleans())
def test_no_archive_writes_outside_the_root(tmp_path: Path, members: list, absolute: bool) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    root, outside = base / "rootfs", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    out_path = str(outside) if absolute else "../outside"
    spec = []
    for kind, name, arg in members:
        name = name.replace("OUT", out_path)
        arg = arg.replace("OUT", out_path)
        spec.append((kind, name, arg.encode() if kind == "file" else arg))
    try:
        apply_layer(io.BytesIO(archive(*spec)), root)
    except LayerError:
        pass
    assert outside_untouched(outside)
    assert sorted(p.name for p in base.iterdir()) == ["outside", "rootfs"]


def test_devices_fifos_owners_and_modes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, typ, mode in (("null", tarfile.CHRTYPE, 0o666), ("loop", tarfile.BLKTYPE, 0o660),
                                ("pipe", tarfile.FIFOTYPE, 0o600)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.devmajor, info.devminor = typ, mode, 7, 9
            info.uid, info.gid = 4321, 8765
            tf.addfile(info)
        info = tarfile.TarInfo("suid")
        info.mode, info.uid, info.gid, info.size = 0o4755, 4321, 8765, 2
        tf.addfile(info, io.BytesIO(b"#!"))
    root = tmp_path / "r"
    root.mkdir()
    report = apply_layer(io.BytesIO(buf.getvalue()), root)
    st_pipe = os.lstat(root / "pipe")
    assert stat.S_ISFIFO(st_pipe.st_mode)
    st_suid = os.lstat(root / "suid")
    if os.geteuid() == 0:
        assert report.skipped == ()
        st_null = os.lstat(root / "null")
        assert stat.S_ISCHR(st_null.st_mode) and os.major(st_null.st_rdev) == 7
        assert stat.S_ISBLK(os.lstat(root / "loop").st_mode)
        assert (st_suid.st_uid, st_suid.st_gid) == (4321, 8765)
        assert stat.S_IMODE(st_suid.st_mode) == 0o4755
    else:
        assert len(report.skipped) == 2


def test_gzip_layers_of_many_members_and_block_sizes_apply_whole(tmp_path: Path) -> None:
    # The inflater (ISA-L's where installed) reads every member, across the read-ahead
    # blocks' edges: files of 1 MiB +- 1 byte end exactly at, before and after one.
    files = {f"f{i}": os.urandom(n) for i, n in enumerate((1 << 20, (1 << 20) - 1, (1 << 20) + 1, 0, 7))}
    tar = archive(*(("file", name, data) for name, data in files.items()))
    members = b"".join(gzip.compress(tar[i:i + 300_000], 1) for i in range(0, len(tar), 300_000))
    apply_layer(io.BytesIO(members), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


# -- headers other tools write, and what no file can be -----------------------------------

def _pax_file(name: str, data: bytes, pax: dict[str, str], *, first: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if first:
            tf.addfile(tarfile.TarInfo("first"))
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.pax_headers = len(data), 1000, pax
        tf.addfile(info, io.BytesIO(data))
        tf.addfile(tarfile.TarInfo("after"))
    return buf.getvalue()


@pytest.mark.parametrize("pax", [
    {"GNU.sparse.size": str(256 << 20), "GNU.sparse.map": "4096,5"},  # pax sparse 0.1
    {"GNU.sparse.size": str(256 << 20), "GNU.sparse.numblocks": "1",  # pax sparse 0.0
     "GNU.sparse.offset": "4096", "GNU.sparse.numbytes": "5"},
])
def test_a_sparse_entry_keeps_its_holes(jail: tuple[Path, Path], pax: dict[str, str]) -> None:
    """A few header bytes can claim terabytes of holes: they stay holes (as Docker leaves
    them), they are not written out as zeros until the disk is full."""
    root, _ = jail
    apply_layer(io.BytesIO(_pax_file("sparse", b"begin", pax)), root)
    st_sparse = os.lstat(root / "sparse")
    assert st_sparse.st_size == 256 << 20 and st_sparse.st_blocks * 512 < 1 << 20
    with open(root / "sparse", "rb") as f:
        assert f.read(4101) == b"\0" * 4096 + b"begin" and f.read(8) == b"\0" * 8
    assert (root / "after").exists()


@pytest.mark.parametrize("pax, words", [
    ({"GNU.sparse.size": str(1 << 63), "GNU.sparse.map": "0,5"}, "more than a file here can hold"),
    ({"GNU.sparse.size": "100", "GNU.sparse.map": "50,5,0,5"}, "blocks out of order"),
    ({"GNU.sparse.size": "100", "GNU.sparse.map": "98,5"}, "past the file's size"),
    ({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "9"},
     "malformed tar header"),  # a 1.0 map that is not one
    ({"mtime": "inf"}, "has mtime inf"),
    ({"mtime": "nan"}, "has mtime nan"),
    ({"mtime": "1e30"}, "has mtime 1e+30"),
    ({"uid": str(1 << 40)}, f"is owned by {1 << 40}:0, which no file can be"),
    ({"gid": "4294967295"}, "is owned by 0:4294967295"),
])
def test_headers_no_file_can_have_are_format_errors(jail: tuple[Path, Path], pax: dict[str, str],
                                                    words: str) -> None:
    root, _ = jail
    for first in (False, True):  # tarfile reads the first header as it opens the stream
        blob = _pax_file("f", b"hello", pax, first=first)
        with pytest.raises(LayerFormatError, match=re.escape(words)):
            apply_layer(io.BytesIO(blob), root, same_owner=True)


def test_a_symlink_target_with_a_nul_byte_is_refused(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("s")
        info.type, info.pax_headers = tarfile.SYMTYPE, {"linkpath": "a\0b"}
        tf.addfile(info)
    with pytest.raises(UnsafeLayerEntry, match="NUL byte in the symlink target"):
        apply_layer(io.BytesIO(buf.getvalue()), root)


def test_a_layer_that_inflates_past_the_free_space_stops_before_the_disk_is_full(
        jail: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A small gzip bomb (zeros inflate 1000:1) on a file system with 40 MiB free of
    1 GiB: extraction stops while 5 % of it is still free, with an error that says so."""
    import builder.layers.extract as extract
    from cas.errors import StorageFull

    root, _ = jail
    real = os.fstatvfs

    def small_disk(fd: int) -> os.statvfs_result:
        st_fs = real(fd)
        return os.statvfs_result((4096, 4096, (1 << 30) // 4096, (40 << 20) // 4096,
                                  (40 << 20) // 4096, *st_fs[5:]))

    monkeypatch.setattr(os, "fstatvfs", small_disk)
    monkeypatch.setattr(extract, "_CHECK_EVERY", 1 << 20)
    bomb = gzip.compress(archive(("file", "zeros", b"\0" * (32 << 20))), 9)
    assert len(bomb) < 64 << 10
    with pytest.raises(StorageFull, match=r"layer entry 'zeros'.*keep less than 51 MiB free"):
        apply_layer(io.BytesIO(bomb), root)
    assert os.lstat(root / "zeros").st_size < 2 << 20


def test_the_diff_id_covers_the_whole_stream(jail: tuple[Path, Path]) -> None:
    root, _ = jail
    from cas import Digest

    tar = archive(("file", "f", b"x")) + b"\0" * 4096  # more end blocks than needed
    apply_layer(io.BytesIO(gzip.compress(tar)), root, diff_id=Digest.of(tar))
    with pytest.raises(LayerFormatError, match="image config lists"):
        apply_layer(io.BytesIO(gzip.compress(tar)), root, diff_id=Digest.of(tar[:-512]))


@pytest.mark.parametrize("members", [
    [("file", "a/" * 512 + "f", b"")],  # 513 deep
    [("file", "a/" * 1200 + "f", b"")],  # past Python's recursion limit
    [("sym", "l", "a/" * 300 + "b"), ("file", "l/" + "c/" * 300 + "f", b"")],  # via a link
])
def test_an_entry_nested_past_the_depth_limit_is_refused(jail: tuple[Path, Path],
                                                          members: list) -> None:
    """Tree walks (flattening for COPY --from, removing a tree) recurse per level: a
    layer nesting deeper than they go is refused where it enters, with its reason, not
    a crash in a later step."""
    root, _ = jail
    apply_layer(io.BytesIO(archive(("file", "a/" * 511 + "ok", b"fine"))), root)  # 512 deep
    with pytest.raises(LayerFormatError, match=r"directories deep in the rootfs, more than "
                                                r"the 512 pybuild handles"):
        apply_layer(io.BytesIO(archive(*members)), root)


@pytest.mark.parametrize("name", ["d/" + "x" * 300, "x" * 300 + "/f"])
def test_a_name_over_255_bytes_is_named_with_the_limit(jail: tuple[Path, Path], name: str) -> None:
    root, _ = jail
    with pytest.raises(LayerFormatError) as caught:
        apply_layer(io.BytesIO(archive(("file", name, b"x"))), root)
    message = str(caught.value)
    assert "'" + "x" * 40 + "'... is 300 bytes long" in message
    assert "at most 255 bytes per name" in message and "change the archive or image" in message
    assert str(root) not in message and "lower layers" not in message


def test_a_deep_layer_applies_below_a_long_rootfs_path(tmp_path: Path) -> None:
    """Entries whose path inside the rootfs is close to PATH_MAX apply below a rootfs
    whose own path makes the whole longer than the kernel takes: files, a symlink, a hard
    link, and a whiteout and an opaque directory over a lower layer's deep entries."""
    from builder.layers.longpath import short

    root = tmp_path / ("r" * 200) / ("s" * 200) / ("t" * 200) / "rootfs"
    root.mkdir(parents=True)
    deep = "/".join(["d" * 200] * 18)  # 3,617 bytes: with the root's, past 4,096
    apply_layer(io.BytesIO(archive(("file", f"{deep}/gone", b"x"), ("dir", f"{deep}/opq", None),
                                   ("file", f"{deep}/opq/old", b"o"))), root)
    apply_layer(io.BytesIO(archive(
        ("file", f"{deep}/f", b"deep\n"), ("sym", f"{deep}/s", "f"), ("hard", f"{deep}/h", f"{deep}/f"),
        ("file", f"{deep}/.wh.gone", b""), ("file", f"{deep}/opq/.wh..wh..opq", b""),
        ("file", f"{deep}/opq/new", b"n"))), root)
    assert len(str(root / deep / "f")) > 4096
    with short(root / deep, 256) as at:
        assert Path(at, "f").read_bytes() == b"deep\n"
        assert os.readlink(Path(at, "s")) == "f"
        assert os.lstat(Path(at, "h")).st_ino == os.lstat(Path(at, "f")).st_ino
        assert sorted(os.listdir(at)) == ["f", "h", "opq", "s"]
        assert os.listdir(Path(at, "opq")) == ["new"]
        assert os.lstat(Path(at, "f")).st_mtime == 1000
