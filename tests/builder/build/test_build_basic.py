"""A one-stage build from a busybox base: rootfs, config, history, outputs."""

from __future__ import annotations

import json
from pathlib import Path


def test_basic_rootfs_and_config(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("basic")
    out = tmp_path / "out"
    oci = tmp_path / "oci"
    result = build(ctx, local=out, oci=oci, source_date_epoch=1700000000)
    assert (out / "app/greeting.txt").read_text() == "hi\n"
    assert (out / "opt/dir/a.txt").read_text() == "a\n"
    assert (out / "opt/dir/sub/b.txt").read_text() == "b\n"
    assert (out / "app/run.txt").read_text() == "hello from run\n"
    assert not (out / "etc/hostname").exists()
    assert (out / "bin/busybox").is_file()
    cfg = result.image.config.config
    assert cfg is not None
    assert "APP_HOME=/app" in (cfg.env or ())
    assert cfg.working_dir == "/app"
    assert cfg.user == "nobody"
    assert cfg.entrypoint == ("/bin/sh", "-c")
    assert cfg.cmd == ("cat /app/run.txt",)
    assert cfg.labels == {"org.example.name": "basic case"}
    assert cfg.exposed_ports == {"53/udp": {}, "8080/tcp": {}}
    index = json.loads((oci / "index.json").read_text())
    assert index["manifests"][0]["digest"] == str(result.image.digest)
    manifest = json.loads((oci / "blobs/sha256" / result.image.digest.encoded).read_bytes())
    assert len(manifest["layers"]) == len(result.image.config.rootfs.diff_ids) == 5
    history = result.image.config.history or ()
    layered = [h for h in history if not h.empty_layer]
    assert len(layered) == 5
    assert any(h.created_by == "WORKDIR /app" for h in history)
    # as BuildKit's: the build args the stage declared come before the command
    assert any((h.created_by or "").startswith("RUN |1 GREETING=hello /bin/sh -c echo")
               for h in history)
    assert any(h.created_by == "ARG GREETING=hello" and h.empty_layer for h in history)
    assert all(h.empty_layer for h in history if (h.created_by or "").startswith("LABEL"))


def test_zstd_layers(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(context_of("basic"), local=out, compression="zstd", source_date_epoch=0)
    ours = result.image.manifest.layers[1:]  # the base layer keeps its own compression
    assert ours and all(d.media_type.endswith("+zstd") for d in ours)
    assert (out / "app/run.txt").read_text() == "hello from run\n"
