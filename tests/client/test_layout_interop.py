"""OCI layouts shared with other tools: ``pybuild copy`` into a layout skopeo made names,
renames and adds images there as ``skopeo copy`` does, keeps what the layout's
``index.json`` holds besides, and skopeo and umoci read every tag afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cas import Digest
from registry.client.layouts import LayoutError, OciLayout
from registry.oci import OCI_MANIFEST, Descriptor
from testkit.clients import run, skopeo, umoci
from testkit.images import make_image, make_layer, tar_files, write_oci_layout

ROOT = Path(__file__).resolve().parents[2]


def _pybuild_copy(tmp_path: Path, src: str, dst: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "copy", "-q", "--storage", str(tmp_path / "storage"), src, dst],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)


def _entries(layout: Path) -> list[tuple[str, dict[str, str]]]:
    index = json.loads((layout / "index.json").read_text())
    return [(m["digest"], m.get("annotations") or {}) for m in index["manifests"]]


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """Two one-image layouts, ``a`` and ``b``, each tagged ``latest``."""
    return {name: write_oci_layout(make_image([make_layer(tar_files({"f": name.encode()}))]),
                                   tmp_path / f"src-{name}")
            for name in ("a", "b")}


def test_tags_written_into_a_skopeo_layout_as_skopeo_writes_them(tmp_path: Path,
                                                                 images: dict[str, Path]) -> None:
    """The same copies, by skopeo into one copy of a layout and by pybuild into another,
    leave the same entries: a tag given to another image leaves its old entry there
    untagged, an untagged copy neither takes a tag from an entry of the same digest nor
    repeats an untagged one."""
    made = tmp_path / "made"
    for tag in ("one", "two"):
        run(skopeo("copy", "-q", f"oci:{images['a']}:latest", f"oci:{made}:{tag}"))
    by_skopeo, by_pybuild = tmp_path / "skopeo", tmp_path / "pybuild"
    shutil.copytree(made, by_skopeo)
    shutil.copytree(made, by_pybuild)
    steps = [("b", ":one"), ("a", ""), ("a", ""), ("b", ""), ("a", ":three"), ("b", ":one")]
    for src, tag in steps:
        run(skopeo("copy", "-q", f"oci:{images[src]}:latest", f"oci:{by_skopeo}{tag}"))
        done = _pybuild_copy(tmp_path, f"oci:{images[src]}:latest", f"oci:{by_pybuild}{tag}")
        assert done.returncode == 0, done.stderr
        assert _entries(by_pybuild) == _entries(by_skopeo), (src, tag)
    tags = sorted(run(umoci("ls", "--layout", str(by_pybuild))).stdout.split())
    assert tags == ["one", "three", "two"]
    for tag in tags:
        inspected = json.loads(run(skopeo("inspect", f"oci:{by_pybuild}:{tag}")).stdout)
        expected = json.loads(run(skopeo("inspect", f"oci:{by_skopeo}:{tag}")).stdout)
        assert inspected["Digest"] == expected["Digest"]
        run(umoci("stat", "--image", f"{by_pybuild}:{tag}"))


def test_a_tag_added_keeps_the_index_fields_and_entry_fields(tmp_path: Path,
                                                            images: dict[str, Path]) -> None:
    layout = tmp_path / "layout"
    run(skopeo("copy", "-q", f"oci:{images['a']}:latest", f"oci:{layout}:one"))
    index: dict[str, Any] = json.loads((layout / "index.json").read_text())
    index["annotations"] = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    index["manifests"][0]["annotations"]["io.containerd.image.name"] = "example.com/a:one"
    (layout / "index.json").write_text(json.dumps(index))
    done = _pybuild_copy(tmp_path, f"oci:{images['b']}:latest", f"oci:{layout}:two")
    assert done.returncode == 0, done.stderr
    after = json.loads((layout / "index.json").read_text())
    assert after["annotations"] == index["annotations"]
    assert after["manifests"][0] == index["manifests"][0]
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in after["manifests"]] == ["one", "two"]

    # an entry's artifactType is written with the tag (a build cache's is)
    desc = Descriptor(OCI_MANIFEST, Digest.parse(index["manifests"][0]["digest"]),
                      index["manifests"][0]["size"], artifact_type="application/example")
    asyncio.run(OciLayout(layout).tag(desc, "cache"))
    entry = json.loads((layout / "index.json").read_text())["manifests"][-1]
    assert entry["artifactType"] == "application/example"


def test_an_unreadable_index_json_is_refused_not_replaced(tmp_path: Path, images: dict[str, Path]) -> None:
    layout = tmp_path / "layout"
    run(skopeo("copy", "-q", f"oci:{images['a']}:latest", f"oci:{layout}:one"))
    broken = (layout / "index.json").read_text().replace('"schemaVersion":2,', "")
    (layout / "index.json").write_text(broken)
    done = _pybuild_copy(tmp_path, f"oci:{images['b']}:latest", f"oci:{layout}:two")
    assert done.returncode == 1
    assert "index.json" in done.stderr and "schemaVersion" in done.stderr and "repair or remove" in done.stderr
    assert "internal error" not in done.stderr
    assert (layout / "index.json").read_text() == broken
    with pytest.raises(LayoutError, match="would be lost"):
        asyncio.run(OciLayout(layout).tag(Descriptor(OCI_MANIFEST, Digest.of(b"x"), 1), "t"))


def test_a_layout_umoci_made_is_read_and_written(tmp_path: Path, images: dict[str, Path]) -> None:
    """``umoci init`` writes ``"manifests": null``: no image, not a broken index."""
    layout = tmp_path / "layout"
    run(umoci("init", "--layout", str(layout)))
    done = _pybuild_copy(tmp_path, f"oci:{layout}", f"oci:{tmp_path / 'out'}:x")
    assert done.returncode == 1
    assert f"{layout} holds no image (its index.json lists none): copy one there" in done.stderr
    done = _pybuild_copy(tmp_path, f"oci:{images['a']}:latest", f"oci:{layout}:a")
    assert done.returncode == 0, done.stderr
    run(umoci("new", "--image", f"{layout}:empty"))
    assert sorted(run(umoci("ls", "--layout", str(layout))).stdout.split()) == ["a", "empty"]
    for tag in ("a", "empty"):
        done = _pybuild_copy(tmp_path, f"oci:{layout}:{tag}", f"oci:{tmp_path / 'out'}:{tag}")
        assert done.returncode == 0, done.stderr
    assert sorted(run(umoci("ls", "--layout", str(tmp_path / "out"))).stdout.split()) == ["a", "empty"]
