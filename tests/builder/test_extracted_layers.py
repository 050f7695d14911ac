"""Extracted layers (``builder.extracted``): a stored layer blob streamed from the store
into its overlay lower-dir form in one pass, whiteouts and opaque directories marked."""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from builder.extracted import ExtractedLayers
from builder.sandbox.userns import overlay_xattr
from cas import Digest, StoreConfig, open_store
from testkit.tools import require_root


def _layer(*members: tuple[str, bytes | None]) -> bytes:
    """A gzip layer: ``(name, data)`` files, ``(name, None)`` directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _diff_id(blob: bytes) -> Digest:
    """What an image config lists for the gzip layer ``blob``."""
    return Digest.of(gzip.decompress(blob))


async def test_a_layer_is_extracted_with_its_whiteouts_as_overlay_marks(tmp_path: Path) -> None:
    require_root("whiteouts are character devices: mknod needs root")
    big = os.urandom(9 << 20)  # several store reads (4 MiB each) and reader refills
    blob = _layer(("app", None), ("app/big.bin", big), ("app/.wh.old", b""),
                  ("etc", None), ("etc/.wh..wh..opq", b""), ("etc/new.conf", b"x\n"))
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        info = await store.put(blob)
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        diff_id = _diff_id(blob)
        root = await layers.ensure(diff_id, info.digest)
        assert root == layers.path(diff_id)
        assert (root / "app/big.bin").read_bytes() == big
        assert (root / "etc/new.conf").read_text() == "x\n"
        old = os.lstat(root / "app/old")
        assert stat.S_ISCHR(old.st_mode) and old.st_rdev == os.makedev(0, 0)
        assert os.getxattr(root / "etc", overlay_xattr("opaque")) == b"y"
        # Nothing is left behind but the extracted layer; a second call reuses it.
        assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [diff_id.encoded]
        assert await layers.ensure(diff_id, info.digest) == root
    finally:
        await store.close()


async def test_a_layer_another_build_extracted_meanwhile_is_used(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Two builds (two processes, each with its own in-process lock) that extract one
    layer at once: the one that finishes second uses the first one's directory."""
    import builder.extracted as extracted

    blob = _layer(("app", None), ("app/f.txt", b"mine\n"))
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        info = await store.put(blob)
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        diff_id = _diff_id(blob)
        real_extract = extracted._extract

        def extract_while_another_build_finishes(src, dest: Path, diff_id, below=None) -> None:  # type: ignore[no-untyped-def]
            real_extract(src, dest, diff_id, below)
            theirs = layers.path(diff_id)
            (theirs / "app").mkdir(parents=True)
            (theirs / "app" / "f.txt").write_text("theirs\n")

        monkeypatch.setattr(extracted, "_extract", extract_while_another_build_finishes)
        root = await layers.ensure(diff_id, info.digest)
        assert root == layers.path(diff_id)
        assert (root / "app/f.txt").read_text() == "theirs\n"
        assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [diff_id.encoded]
    finally:
        await store.close()


def _refused(*args: object, **kwargs: object) -> None:
    raise PermissionError(errno.EPERM, "Operation not permitted")


async def test_where_whiteout_devices_are_refused_whiteouts_take_the_xattr_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An overlayfs refuses 0/0 character devices on itself (EPERM, for root too): the
    # whiteout becomes an empty file with overlay.whiteout, which the readers of
    # extracted layers take for the same deletion.
    from builder.layers import changeset_from_upper
    from builder.sandbox.flatten import flatten_lowers, flatten_subtree
    from builder.sandbox.rootfs import find_in_lowers
    from builder.sandbox.whiteouts import is_whiteout

    below = _layer(("app", None), ("app/kept", b"k\n"), ("app/gone", b"g\n"))
    above = _layer(("app", None), ("app/.wh.gone", b""), ("app/new", b"n\n"))
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        lower = await layers.ensure(_diff_id(below), (await store.put(below)).digest)
        monkeypatch.setattr(os, "mknod", _refused)
        upper = await layers.ensure(_diff_id(above), (await store.put(above)).digest)
    finally:
        await store.close()
    gone = upper / "app" / "gone"
    assert stat.S_ISREG(gone.lstat().st_mode) and gone.lstat().st_size == 0
    assert os.getxattr(gone, overlay_xattr("whiteout")) == b"y"
    assert os.getxattr(gone.parent, overlay_xattr("opaque")) == b"x"  # what overlayfs needs
    assert is_whiteout(gone, gone.lstat())
    assert not is_whiteout(upper / "app" / "new", (upper / "app" / "new").lstat())
    assert [(w.path, w.opaque) for w in changeset_from_upper(upper).whiteouts] == [
        ("app/gone", False)]
    flatten_lowers([upper, lower], tmp_path / "flat")
    assert sorted(p.name for p in (tmp_path / "flat" / "app").iterdir()) == ["kept", "new"]
    assert find_in_lowers([upper, lower], "app/gone") is None
    assert flatten_subtree([upper, lower], tmp_path / "sub", "app")
    assert sorted(p.name for p in (tmp_path / "sub" / "app").iterdir()) == ["kept", "new"]


async def test_a_storage_that_refuses_both_whiteout_forms_is_named_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.layers import WhiteoutUnsupported

    monkeypatch.setattr(os, "mknod", _refused)
    monkeypatch.setattr(os, "setxattr", _refused)
    blob = _layer(("app", None), ("app/kept", b"k\n"), ("app/.wh.gone", b""))
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        info = await store.put(blob)
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        with pytest.raises(WhiteoutUnsupported) as caught:
            await layers.ensure(_diff_id(blob), info.digest)
        assert str(caught.value).startswith(
            "cannot record the deletion of 'app/gone' in the storage directory: its "
            "filesystem refuses both forms of overlay whiteout")
        assert "Put the storage on ext4, xfs, btrfs or tmpfs" in str(caught.value)
        assert [p.name for p in (tmp_path / "snapshots").iterdir()] == []  # nothing left
    finally:
        await store.close()


async def test_whiteouts_below_a_symlink_or_a_file_of_the_layer_stay_inside(
        tmp_path: Path) -> None:
    """A hostile layer: a symlink to a directory outside, then whiteouts (plain and
    opaque) below it, and below a file of the same layer. The whiteouts hide nothing
    (what the layer put there hides the lower layers' paths) and nothing outside is
    touched."""
    require_root("whiteouts are character devices: mknod needs root")
    outside = tmp_path / "outside"
    outside.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, link in (("a", tarfile.SYMTYPE, str(outside)),
                                 ("a/.wh.x", tarfile.REGTYPE, ""),
                                 ("a/deep/.wh.y", tarfile.REGTYPE, ""),
                                 ("a/sub/.wh..wh..opq", tarfile.REGTYPE, ""),
                                 ("f/.wh.z", tarfile.REGTYPE, ""),
                                 ("f", tarfile.REGTYPE, ""),
                                 ("d/.wh.kept", tarfile.REGTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tf.addfile(info)
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        info = await store.put(gzip.compress(buf.getvalue(), mtime=0))
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        root = await layers.ensure(Digest.of(buf.getvalue()), info.digest)
        assert list(outside.iterdir()) == []
        assert os.readlink(root / "a") == str(outside)
        assert stat.S_ISREG(os.lstat(root / "f").st_mode)
        kept = os.lstat(root / "d/kept")  # a whiteout below a missing directory is marked
        assert stat.S_ISCHR(kept.st_mode) and kept.st_rdev == os.makedev(0, 0)
    finally:
        await store.close()


async def test_a_layer_that_is_not_its_diff_id_is_refused_and_not_kept(tmp_path: Path) -> None:
    """Extracted layers are found by diff_id, whichever image names it: an image whose
    config lists another layer's diff_id for its own (hostile) layer must not make later
    builds of the real image see its files (containerd and Docker refuse such a layer)."""
    from builder.layers import LayerFormatError

    real = _layer(("f", b"good\n"))
    hostile = _layer(("f", b"evil\n"), ("extra", b"x"))
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        with pytest.raises(LayerFormatError) as caught:
            await layers.ensure(_diff_id(real), (await store.put(hostile)).digest)
        assert f"image config lists {_diff_id(real)}" in str(caught.value)
        assert f"has digest {_diff_id(hostile)}" in str(caught.value)
        assert [p.name for p in (tmp_path / "snapshots").iterdir()] == []  # nothing kept
        root = await layers.ensure(_diff_id(real), (await store.put(real)).digest)
        assert (root / "f").read_text() == "good\n" and not (root / "extra").exists()
    finally:
        await store.close()


def _tar(*entries: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info in entries:
            body = (data or {}).get(info.name)
            if body is not None:
                info.size = len(body)
            tf.addfile(info, None if body is None else io.BytesIO(body))
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644,
          owner: int = 0, mtime: int = 1000) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, mtime
    info.uid = info.gid = owner
    return info


async def _stack(tmp_path: Path, *raw: bytes) -> list[Path]:
    """The layers ``raw`` (bottom first) extracted as a stage's lowers (top first)."""
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        layers = ExtractedLayers(tmp_path / "snapshots", store)
        pairs = [(Digest.of(r), (await store.put(gzip.compress(r, mtime=0))).digest) for r in raw]
        return await layers.lowers(pairs)
    finally:
        await store.close()


async def test_a_hard_link_to_a_lower_layers_file_copies_it_up(tmp_path: Path) -> None:
    """As Docker's vfs and overlay2 drivers take it: the link joins a copy of the lower
    file, which keeps its content, owner, mode and time, in directories that keep theirs;
    the layer in between does not hide it, and a third layer links to it as well."""
    require_root("layer owners")
    bottom = _tar(_info("data", tarfile.DIRTYPE, mode=0o750, owner=7, mtime=2000),
                  _info("data/sub", tarfile.DIRTYPE, mode=0o711, owner=8, mtime=3000),
                  _info("data/sub/f.txt", mode=0o640, owner=5, mtime=4000),
                  data={"data/sub/f.txt": b"from below\n"})
    middle = _tar(_info("other.txt"), data={"other.txt": b"x"})
    top = _tar(_info("opt", tarfile.DIRTYPE), _info("opt/link", tarfile.LNKTYPE, "data/sub/f.txt"))
    lowers = await _stack(tmp_path, bottom, middle, top)
    root = lowers[0]
    copied, link = os.lstat(root / "data/sub/f.txt"), os.lstat(root / "opt/link")
    assert (copied.st_ino, copied.st_nlink) == (link.st_ino, 2)
    assert (root / "opt/link").read_bytes() == b"from below\n"
    assert (stat.S_IMODE(copied.st_mode), copied.st_uid, copied.st_mtime) == (0o640, 5, 4000)
    for name, mode, owner, mtime in (("data", 0o750, 7, 2000), ("data/sub", 0o711, 8, 3000)):
        st = os.lstat(root / name)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (mode, owner, mtime), name
    assert not (lowers[1] / "data").exists()  # the middle layer is left as it is
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == sorted(
        p.name for p in lowers)


async def test_a_link_through_a_lower_symlink_finds_the_file_it_leads_to(
        tmp_path: Path) -> None:
    """A symlinked directory of a lower layer on the target's way is followed inside the
    rootfs (relative, or absolute from the rootfs' root), as containerd resolves a link's
    target in the mounted snapshot: the file it leads to is copied up and joined."""
    require_root("layer owners")
    bottom = _tar(_info("data", tarfile.DIRTYPE), _info("data/f.txt", mode=0o640),
                  _info("rel", tarfile.SYMTYPE, "data"), _info("abs", tarfile.SYMTYPE, "/data"),
                  data={"data/f.txt": b"from below\n"})
    top = _tar(_info("l1", tarfile.LNKTYPE, "rel/f.txt"), _info("l2", tarfile.LNKTYPE, "abs/f.txt"))
    root = (await _stack(tmp_path, bottom, top))[0]
    joined = {os.lstat(root / n).st_ino for n in ("data/f.txt", "l1", "l2")}
    assert len(joined) == 1 and os.lstat(root / "l1").st_nlink == 3
    assert (root / "l2").read_bytes() == b"from below\n"
    assert not (root / "rel").exists() and not (root / "abs").exists()


@pytest.mark.parametrize("hiding", ["below", "same layer", "opaque", "symlink"])
async def test_a_link_to_a_hidden_or_unreachable_lower_file_is_a_named_error(
        tmp_path: Path, hiding: str) -> None:
    """A target a whiteout hides (in a layer in between, or earlier in the linking layer
    itself), or one reached through a symlink, is not copied up: the link stays a named
    error, and nothing outside the layers is written."""
    from builder.layers.errors import MissingLinkTarget

    require_root("whiteouts are character devices: mknod needs root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    bottom = _tar(_info("d", tarfile.DIRTYPE), _info("d/f"),
                  _info("evil", tarfile.SYMTYPE, str(outside)), data={"d/f": b"f\n"})
    target = "evil/secret" if hiding == "symlink" else "d/f"
    link = _info("link", tarfile.LNKTYPE, target)
    raw = {"below": [bottom, _tar(_info("d/.wh.f")), _tar(link)],
           "same layer": [bottom, _tar(_info("d/.wh.f"), link)],
           "opaque": [bottom, _tar(_info("d", tarfile.DIRTYPE), _info("d/.wh..wh..opq"), link)],
           "symlink": [bottom, _tar(link)]}[hiding]
    with pytest.raises(MissingLinkTarget, match=f"hard link target {target!r} does not exist "
                       r"\(it is neither in the layer \(before the link\) nor in the layers "
                       "below it"):
        await _stack(tmp_path, *raw)
    assert [p.name for p in outside.iterdir()] == ["secret"]
    assert (outside / "secret").read_text() == "secret\n"
    assert not [p for p in (tmp_path / "snapshots").iterdir() if p.name.startswith(".tmp-")]
