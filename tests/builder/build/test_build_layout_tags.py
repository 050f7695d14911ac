"""``oci-layout://DIR:TAG`` as buildx reads it: ``DIR`` ends at its first colon, so the tag
may be a full reference, as podman (``save --format oci-dir``) and buildah (``push
oci:``) name an image in a layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from builder.build_cmd import build as build_command
from cas import Digest
from testkit.clients import run, skopeo, umoci

ROOT = Path(__file__).resolve().parents[3]


def test_a_tag_that_is_a_full_reference(busybox_ref: str, tmp_path: Path) -> None:
    base = busybox_ref.removeprefix("oci-layout://")
    layout = tmp_path / "layout"
    run(skopeo("copy", "-q", f"oci:{base}", f"oci:{layout}:localhost/bb:1"))
    run(skopeo("copy", "-q", f"oci:{base}", f"oci:{layout}:other"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x\n")
    (ctx / "Dockerfile").write_text(f"FROM oci-layout://{layout}:localhost/bb:1\nCOPY f /f\n")
    (ctx / "named.Dockerfile").write_text("FROM base\nCOPY f /f\n")
    for extra in ([], ["-f", str(ctx / "named.Dockerfile"), "--build-context",
                       f"base=oci-layout://{layout}:localhost/bb:1"]):
        out = tmp_path / f"out{len(extra)}"
        done = CliRunner().invoke(build_command, ["--progress", "plain", "--storage", str(tmp_path / "s"),
                                                  *extra, "-o", f"type=oci,dest={out},tar=false", str(ctx)])
        assert done.exit_code == 0, done.output
        manifest = json.loads(run(skopeo("inspect", "--raw", f"oci:{out}")).stdout)
        assert len(manifest["layers"]) == 2


def _nest(layout: Path) -> str:
    """The layout's one manifest moved into an index that index.json lists (as buildx
    writes an image with its attestations); returns the manifest's digest."""
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{**entry, "annotations": {},
                                       "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    digest = Digest.of(inner)
    (layout / "blobs" / "sha256" / digest.encoded).write_bytes(inner)
    index["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json",
                           "digest": str(digest), "size": len(inner),
                           "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    (layout / "index.json").write_text(json.dumps(index))
    return str(entry["digest"])


def _build(tmp_path: Path, ctx: Path, base: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "build", "-q", "--storage", str(tmp_path / "s"),
         "-f", str(ctx / "named.Dockerfile"), "--build-context", f"base={base}", str(ctx)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


def test_a_digest_inside_a_listed_index_and_broken_layouts(busybox_ref: str, tmp_path: Path) -> None:
    """``DIR@DIGEST`` names any manifest the layout holds, as BuildKit reads it from the
    layout's blobs (one platform's manifest of an index index.json lists); a layout that
    is broken is named with what is wrong, never an internal error."""
    base = Path(busybox_ref.removeprefix("oci-layout://").rpartition(":")[0])
    layout = tmp_path / "layout"
    shutil.copytree(base, layout)
    manifest = _nest(layout)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x\n")
    (ctx / "named.Dockerfile").write_text("FROM base\nCOPY f /f\n")
    done = _build(tmp_path, ctx, f"oci-layout://{layout}@{manifest}")
    assert done.returncode == 0, done.stderr
    config = json.loads((layout / "blobs" / "sha256" / json.loads(
        (layout / "blobs" / "sha256" / manifest.removeprefix("sha256:")).read_text()
    )["config"]["digest"].removeprefix("sha256:")).read_text())
    done = _build(tmp_path, ctx, f"oci-layout://{layout}@{config['rootfs']['diff_ids'][0]}")
    assert done.returncode == 1 and "no image sha256:" in done.stderr and "(it has: latest)" in done.stderr

    not_a_manifest = b'{"schemaVersion":2,"config":5}'
    for n, (name, data, wanted) in enumerate([
            ("index.json", b'{"manifests":', manifest),
            (f"blobs/sha256/{Digest.of(not_a_manifest).encoded}", not_a_manifest,
             str(Digest.of(not_a_manifest)))]):
        bad = tmp_path / f"bad{n}"
        shutil.copytree(layout, bad)
        (bad / name).write_bytes(data)
        done = _build(tmp_path, ctx, f"oci-layout://{bad}@{wanted}")
        assert done.returncode == 1, done.stderr
        assert "internal error" not in done.stderr and str(bad) in done.stderr, done.stderr
    (layout / "blobs" / "sha256" / manifest.removeprefix("sha256:")).unlink()
    done = _build(tmp_path, ctx, f"oci-layout://{layout}:latest")
    assert done.returncode == 1 and "is missing from the layout" in done.stderr, done.stderr


def test_builds_into_one_layout_keep_each_others_tags(busybox_ref: str, tmp_path: Path) -> None:
    """``-o type=oci,dest=DIR,tar=false`` into a layout adds its entries as BuildKit does:
    the layout's other images (here skopeo's) and the earlier builds' tags stay, a tag
    built again is replaced."""
    layout = tmp_path / "layout"
    run(skopeo("copy", "-q", f"oci:{busybox_ref.removeprefix('oci-layout://')}", f"oci:{layout}:base"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY f /f\n")
    for tag, content in (("1", "a"), ("2", "b"), ("2", "c")):
        (ctx / "f").write_text(content)
        done = CliRunner().invoke(build_command, ["--progress", "plain", "--storage", str(tmp_path / "s"),
                                                  "-t", f"example.com/app:{tag}",
                                                  "-o", f"type=oci,dest={layout},tar=false", str(ctx)])
        assert done.exit_code == 0, done.output
    index = json.loads((layout / "index.json").read_text())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == ["base", "1", "2"]
    assert sorted(run(umoci("ls", "--layout", str(layout))).stdout.split()) == ["1", "2", "base"]
    for tag in names:
        run(skopeo("inspect", f"oci:{layout}:{tag}"))
    last = json.loads(run(skopeo("inspect", "--raw", f"oci:{layout}:2")).stdout)
    layer = layout / "blobs" / "sha256" / last["layers"][-1]["digest"].removeprefix("sha256:")
    assert layer.exists()


def test_a_layout_in_a_tar_is_named_with_how_to_read_it(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"\0" * 1024)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\n")
    done = CliRunner().invoke(build_command, ["--storage", str(tmp_path / "s"), "--build-context",
                                              f"base=oci-layout://{archive}", str(ctx)])
    assert done.exit_code == 2
    assert f"tar -xf {archive} -C DIR, then name oci-layout://DIR" in done.output
