"""xattrs and file kinds through COPY --from: a stage's file capability (``setcap``'s
``security.capability``) and ``user.*`` xattrs reach the layer COPY writes, and a change
of them alone is a change of the COPY's inputs."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

CAP = bytes([1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # net_bind_service


def _archive(path: Path, xattrs: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        data = b"a server\n"
        info = tarfile.TarInfo("server")
        info.size, info.mode = len(data), 0o755
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in xattrs.items()}
        tar.addfile(info, io.BytesIO(data))


def _last_layer_xattrs(oci: Path) -> dict[str, dict[str, str]]:
    blobs = oci / "blobs" / "sha256"
    index = json.loads((oci / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = (blobs / manifest["layers"][-1]["digest"].split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        return {m.name: {k.removeprefix("SCHILY.xattr."): v for k, v in m.pax_headers.items()
                         if k.startswith("SCHILY.xattr.")} for m in tar}


def test_copy_from_keeps_xattrs_and_a_change_of_them_rebuilds(build, busybox_ref: str,
                                                               tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM scratch AS build\nADD app.tar /opt/\n\n"
        "FROM scratch\nCOPY --from=build --chown=1000:50 /opt/server /usr/bin/server\n")
    _archive(ctx / "app.tar", {})
    build(ctx, oci=tmp_path / "plain")
    assert _last_layer_xattrs(tmp_path / "plain")["usr/bin/server"] == {}
    # the same file with a capability and a user xattr: the COPY runs again and keeps both
    _archive(ctx / "app.tar", {"security.capability": CAP, "user.origin": b"build"})
    build(ctx, oci=tmp_path / "caps")
    assert _last_layer_xattrs(tmp_path / "caps")["usr/bin/server"] == {
        "security.capability": CAP.decode("latin-1"), "user.origin": "build"}


def _special_files(path: Path) -> None:
    """A tar of ``dev/``: a FIFO, a character and a block device, with owners and modes."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, dev in (("dev", tarfile.DIRTYPE, 0o755, (0, 0)),
                                      ("dev/fifo", tarfile.FIFOTYPE, 0o1640, (0, 0)),
                                      ("dev/null", tarfile.CHRTYPE, 0o666, (1, 3)),
                                      ("dev/loop9", tarfile.BLKTYPE, 0o660, (7, 9))):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, 12, 34, 1000
            info.devmajor, info.devminor = dev
            tar.addfile(info)



def _layer_nodes(oci: Path, n: int) -> dict[str, tuple[bytes, int, int, int, int, int]]:
    """The entries other than directories of layer ``n``: (type, mode, uid, gid, major,
    minor)."""
    blobs = oci / "blobs" / "sha256"
    index = json.loads((oci / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = (blobs / manifest["layers"][n]["digest"].split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        return {m.name: (m.type, m.mode, m.uid, m.gid, m.devmajor, m.devminor) for m in tar
                if not m.isdir()}


def test_copy_from_keeps_fifos_and_device_nodes(build, busybox_ref: str,
                                                 tmp_path: Path) -> None:
    """As BuildKit's copy (a root filesystem made in one stage, copied into scratch):
    FIFOs and device nodes are copied, with their owners and modes, whole directories
    and named sources alike."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM scratch AS rootfs\nADD nodes.tar /\n\n"
        "FROM scratch\nCOPY --from=rootfs /dev /dev\n"
        "COPY --from=rootfs --chown=1:2 --chmod=600 /dev/fifo /dev/null /one/\n")
    _special_files(ctx / "nodes.tar")
    build(ctx, oci=tmp_path / "oci")
    assert _layer_nodes(tmp_path / "oci", -2) == {
        "dev/fifo": (tarfile.FIFOTYPE, 0o1640, 12, 34, 0, 0),
        "dev/null": (tarfile.CHRTYPE, 0o666, 12, 34, 1, 3),
        "dev/loop9": (tarfile.BLKTYPE, 0o660, 12, 34, 7, 9)}
    assert _layer_nodes(tmp_path / "oci", -1) == {
        "one/fifo": (tarfile.FIFOTYPE, 0o600, 1, 2, 0, 0),
        "one/null": (tarfile.CHRTYPE, 0o600, 1, 2, 1, 3)}
