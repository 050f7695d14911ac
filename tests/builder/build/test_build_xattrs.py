"""xattrs through COPY --from: a stage's file capability (``setcap``'s
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
