"""Cold pulls of the client benchmark's image in each layer format other tools write.

The same ten-version corpus as :mod:`bench.client_bench` (v1, and v2 with one file per
layer changed), its layer tars encoded as:

- ``chunked gzip (pybuild)``: one gzip member per content-defined chunk, each member's
  length in FEXTRA (what ``pybuild build`` writes);
- ``plain gzip``: one gzip member per layer (``docker push``'s and most tools' default;
  written at level 1 here, which does not change how it pulls);
- ``multi-member gzip (eStargz-style)``: one member per content-defined chunk (~64 KiB)
  as Go's and Python's gzip writers make them (no length recorded), then an empty
  footer member whose FEXTRA names a TOC offset, as eStargz's does;
- ``zstd``: one zstd frame per layer (level 3);
- ``zstd:chunked``: ``skopeo copy --dest-compress-format zstd:chunked`` of the gzip
  image (one frame per file chunk, its manifest in skippable frames, the manifest's
  position in the layer's annotations).

Each is pushed (v1 and v2) to a loopback CNCF Distribution; then, per format, ``skopeo
copy`` into an empty OCI layout and ``pybuild pull`` into an empty store are timed (best
of ``repeats``), and pybuild pulls v2 into the store holding v1: the growth of the store
over v2's layer bytes is what that format lets the store keep of v2 (the rest deduped).
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard
from pyfastcdc import FastCDC

from bench.data import chunked_layer
from bench.pybuild_cli import pybuild_argv, pybuild_env, timed_run
from bench.report import Measurement
from testkit.images import Layer, make_image, write_oci_layout
from testkit.registries import RegistryProcess, distribution_argv

__all__ = ["FORMATS", "bench_formats"]

OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _plain_gzip(tar: bytes) -> Layer:
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    return Layer(tar=tar, blob=comp.compress(tar) + comp.flush())


def _estargz_style(tar: bytes) -> Layer:
    members = []
    for chunk in FastCDC(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10).cut_buf(tar):
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        data = tar[chunk.offset:chunk.offset + chunk.length]
        members.append(comp.compress(data) + comp.flush())
    toc_offset = sum(map(len, members))
    # eStargz's footer: an empty member, FEXTRA subfield 'SG' = "%016xSTARGZ" % TOC offset.
    extra = b"SG" + (22).to_bytes(2, "little") + b"%016xSTARGZ" % toc_offset
    footer = (b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + len(extra).to_bytes(2, "little") + extra
              + b"\x03\x00" + b"\0" * 8)
    return Layer(tar=tar, blob=b"".join(members) + footer)


def _zstd(tar: bytes) -> Layer:
    blob = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(tar)
    return Layer(tar=tar, blob=blob, media_type=OCI_ZSTD)


# name -> how a layer tar becomes its blob (None: made by skopeo from the gzip image)
FORMATS: dict[str, Callable[[bytes], Layer] | None] = {
    "chunked gzip (pybuild)": lambda tar: chunked_layer(tar),  # type: ignore[no-any-return]
    "plain gzip": _plain_gzip,
    "multi-member gzip (eStargz-style)": _estargz_style,
    "zstd": _zstd,
    "zstd:chunked": None,
}


def _allocated(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _layouts(workdir: Path, tars: dict[str, list[bytes]]) -> dict[str, tuple[Path, int, int]]:
    """Per format: an OCI layout with tags v1 and v2, and the v1 and v2 layer bytes."""
    out: dict[str, tuple[Path, int, int]] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for name, encode in FORMATS.items():
            if encode is None:
                continue
            images = {tag: make_image(list(pool.map(encode, tars[tag]))) for tag in ("v1", "v2")}
            layout = workdir / _slug(name)
            for tag, image in images.items():
                write_oci_layout(image, layout, ref=tag)
            out[name] = (layout, *(sum(len(x.blob) for x in images[t].layers) for t in ("v1", "v2")))
    gzip_layout = out["chunked gzip (pybuild)"][0]
    chunked = workdir / _slug("zstd:chunked")
    sizes = []
    for tag in ("v1", "v2"):
        timed_run(["skopeo", "copy", "--dest-compress-format", "zstd:chunked",
              f"oci:{gzip_layout}:{tag}", f"oci:{chunked}:{tag}"])
        sizes.append(_layer_bytes(chunked, tag))
    out["zstd:chunked"] = (chunked, sizes[0], sizes[1])
    return out


def _layer_bytes(layout: Path, tag: str) -> int:
    from testkit.images import read_oci_layout

    image = read_oci_layout(layout, tag)
    return sum(os.path.getsize(layout / "blobs" / d.replace(":", "/")) for d in image.layer_digests)


def _slug(name: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in name.lower()).split()
    return "fmt-" + "-".join(words)


def bench_formats(workdir: Path, tars: dict[str, list[bytes]], *, repeats: int = 2) -> list[Measurement]:
    """The cold-pull and dedup rows, one per format (see the module docstring)."""
    layouts = _layouts(workdir, tars)
    cold: dict[str, dict[str, float]] = {}
    kept: dict[str, float] = {}
    (workdir / "fmt-dist").mkdir(parents=True, exist_ok=True)
    dist = RegistryProcess("distribution", distribution_argv(workdir / "fmt-dist"),
                           storage=workdir / "fmt-dist" / "storage",
                           log=workdir / "fmt-dist.log")
    with dist as running:
        for name, (layout, _, v2_bytes) in layouts.items():
            repo = _slug(name)
            for tag in ("v1", "v2"):
                timed_run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                      f"docker://{running.ref(repo, tag)}"])
            times: dict[str, list[float]] = {"skopeo": [], "pybuild": []}
            for attempt in range(repeats):
                dest, store = workdir / f"{repo}-skopeo", workdir / f"{repo}-store{attempt}"
                os.sync()
                times["skopeo"].append(timed_run(["skopeo", "copy", "--src-tls-verify=false",
                                             f"docker://{running.ref(repo, 'v1')}",
                                             f"oci:{dest}:v1"]))
                shutil.rmtree(dest, ignore_errors=True)
                os.sync()
                times["pybuild"].append(timed_run(pybuild_argv("pull", "-q", "--storage", str(store),
                                                          running.ref(repo, "v1")), pybuild_env()))
                if attempt == 0:
                    before = _allocated(store)
                    timed_run(pybuild_argv("pull", "-q", "--storage", str(store),
                                      running.ref(repo, "v2")), pybuild_env())
                    kept[name] = (_allocated(store) - before) / v2_bytes
                shutil.rmtree(store, ignore_errors=True)
            cold[name] = {tool: round(min(t), 3) for tool, t in times.items()}
    rows = []
    for name, values in cold.items():
        rows.append(Measurement(f"pull v1 cold, {name} ({layouts[name][1] / 1e6:.0f} MB)", "s",
                                False, values))
    # skopeo keeps every changed blob whole: 1.0 of v2's bytes.
    for name, ratio in kept.items():
        rows.append(Measurement(f"v2 over v1, {name}: stored anew / v2 layer bytes", "ratio",
                                False, {"skopeo": 1.0, "pybuild": round(ratio, 3)}))
    return rows
