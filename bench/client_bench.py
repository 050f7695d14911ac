"""Pulling an image from a registry: skopeo (the peer) and pybuild's own client.

The image has ``layers`` layers of pseudo-random data, served by a loopback CNCF
Distribution. Measured for each client:

- ``pull, cold``: into an empty destination;
- ``pull, one layer changed``: a second tag that differs only in its last layer, pulled
  into the destination that already holds the first (skopeo reuses blobs present in an
  OCI layout; pybuild reuses its local pieces).

pybuild's side is called as ``python3 -m builder pull --storage DIR REF`` once ``pull``
exists.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.data import pseudo_random
from bench.pybuild_cli import has_command, missing_reason, pybuild_argv, pybuild_env
from bench.report import Measurement
from tests.helpers.images import make_image, make_layer, tar_files, write_oci_layout
from tests.helpers.registries import distribution_registry

__all__ = ["ClientBenchError", "bench_client"]

MiB = 1 << 20


class ClientBenchError(RuntimeError):
    """A client failed to pull the benchmark image."""


def _timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=1800,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise ClientBenchError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def _layout(workdir: Path, layers: int, layer_size: int) -> tuple[Path, int]:
    def layer(i: int, variant: bytes) -> bytes:
        return tar_files({f"data/layer{i}.bin": pseudo_random(layer_size, seed=b"client%d" % i + variant)})

    common = [make_layer(layer(i, b""), level=1) for i in range(layers - 1)]
    v1 = make_image([*common, make_layer(layer(layers - 1, b"v1"), level=1)])
    v2 = make_image([*common, make_layer(layer(layers - 1, b"v2"), level=1)])
    layout = write_oci_layout(v1, workdir / "source", ref="v1")
    write_oci_layout(v2, layout, ref="v2")
    return layout, sum(len(layer.blob) for layer in v1.layers)


def bench_client(workdir: Path, *, layers: int, layer_size: int,
                 report_skip: Callable[[str, str], None]) -> list[Measurement]:
    """Time each available client; ``report_skip(client, why)`` for those that are not."""
    layout, total = _layout(workdir, layers, layer_size)
    cold: dict[str, float] = {}
    incremental: dict[str, float] = {}
    with distribution_registry(workdir / "registry") as registry:
        for tag in ("v1", "v2"):
            subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                            f"docker://{registry.ref('bench/client', tag)}"],
                           check=True, capture_output=True)

        dest = workdir / "skopeo-dest"

        def skopeo(tag: str) -> float:
            return _timed(["skopeo", "copy", "--src-tls-verify=false",
                           f"docker://{registry.ref('bench/client', tag)}", f"oci:{dest}:{tag}"])

        cold["skopeo"] = skopeo("v1")
        incremental["skopeo"] = skopeo("v2")
        shutil.rmtree(dest, ignore_errors=True)

        if has_command("pull"):
            storage = workdir / "pybuild"

            def pybuild(tag: str) -> float:
                return _timed(pybuild_argv("pull", "--storage", str(storage),
                                           registry.ref("bench/client", tag)), pybuild_env())

            cold["pybuild"] = pybuild("v1")
            incremental["pybuild"] = pybuild("v2")
        else:
            report_skip("pybuild", missing_reason("pull"))

    label = f"{layers} x {layer_size / MiB:.0f} MiB layers, {total / 1e6:.0f} MB"
    return [
        Measurement(f"pull, cold ({label})", "s", False,
                    {k: round(v, 3) for k, v in cold.items()}),
        Measurement("pull, one layer changed", "s", False,
                    {k: round(v, 3) for k, v in incremental.items()}),
        Measurement("pull, cold", "MB/s", True,
                    {k: round(total / v / 1e6, 1) for k, v in cold.items()}),
    ]
