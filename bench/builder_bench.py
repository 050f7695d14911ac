"""Building the same Dockerfile with docker build (BuildKit), buildah and pybuild.

The Dockerfile (``workloads/builder.Dockerfile``) starts from a busybox image served by
a loopback CNCF Distribution, COPYs a context of pseudo-random files and runs two RUN
steps. For each builder, after one warm-up build (which pulls the base):

- ``build, no cache``: every step executes again (``--no-cache``);
- ``rebuild, cached``: nothing changed, every step comes from the cache.

pybuild's side is called as ``python3 -m builder build --storage DIR --build-arg
BASE=... -t TAG -f Dockerfile CONTEXT`` once ``build`` exists.
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
from tests.helpers.clients import ContainerStorage
from tests.helpers.docker_engine import docker_client, docker_engine
from tests.helpers.images import busybox_image, write_oci_layout
from tests.helpers.registries import distribution_registry
from tests.helpers.rootfs import make_busybox_rootfs

__all__ = ["BuilderBenchError", "bench_builder"]

MiB = 1 << 20
DOCKERFILE = Path(__file__).resolve().parent / "workloads" / "builder.Dockerfile"


class BuilderBenchError(RuntimeError):
    """A builder failed on the benchmark's Dockerfile."""


def _timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=1800,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BuilderBenchError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def _context(workdir: Path, files: int, file_size: int) -> Path:
    context = workdir / "context"
    (context / "files").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCKERFILE, context / "Dockerfile")
    for i in range(files):
        (context / "files" / f"f{i:03d}.bin").write_bytes(
            pseudo_random(file_size, seed=b"context%d" % i))
    return context


def _no_cache_then_cached(build: Callable[[bool], float]) -> tuple[float, float]:
    """(seconds without cache, seconds fully cached) after an untimed warm-up build."""
    build(False)  # warm-up: pulls the base and fills the cache
    return build(True), build(False)


def bench_builder(workdir: Path, *, files: int, file_size: int,
                  report_skip: Callable[[str, str], None]) -> list[Measurement]:
    """Time each available builder; ``report_skip(builder, why)`` for those that are not."""
    context = _context(workdir, files, file_size)
    layout = write_oci_layout(busybox_image(make_busybox_rootfs(workdir / "rootfs")),
                              workdir / "busybox")
    results: dict[str, tuple[float, float]] = {}
    with distribution_registry(workdir / "registry") as registry:
        base = registry.ref("bench/busybox", "latest")
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                        f"docker://{base}"], check=True, capture_output=True)
        build_arg = f"BASE={base}"

        if shutil.which("dockerd") or shutil.which("docker"):
            with docker_engine() as engine:
                env = dict(engine.env, DOCKER_BUILDKIT="1")

                def docker(no_cache: bool) -> float:
                    return _timed([docker_client("build"), "build", "--network", "none",
                                   *(["--no-cache"] if no_cache else []),
                                   "--build-arg", build_arg, "-t", "pybuild-bench/built",
                                   str(context)], env)

                results["docker"] = _no_cache_then_cached(docker)
                engine.run("rmi", "--force", "pybuild-bench/built", check=False)
        else:
            report_skip("docker", "docker.io is not installed")

        if shutil.which("buildah"):
            storage = ContainerStorage.under(workdir / "buildah")

            def buildah(no_cache: bool) -> float:
                return _timed(["buildah", *storage.options(), "bud", "--isolation", "chroot",
                               "--layers", "--tls-verify=false",
                               *(["--no-cache"] if no_cache else []),
                               "--build-arg", build_arg, "-t", "pybuild-bench/built",
                               str(context)])

            results["buildah"] = _no_cache_then_cached(buildah)
        else:
            report_skip("buildah", "buildah is not installed")

        if has_command("build"):
            storage_dir = workdir / "pybuild"

            def pybuild(no_cache: bool) -> float:
                return _timed(pybuild_argv("build", "--storage", str(storage_dir),
                                           *(["--no-cache"] if no_cache else []),
                                           "--build-arg", build_arg, "-t", "pybuild-bench/built",
                                           "-f", str(context / "Dockerfile"), str(context)),
                              pybuild_env())

            results["pybuild"] = _no_cache_then_cached(pybuild)
        else:
            report_skip("pybuild", missing_reason("build"))

    label = f"{files} x {file_size / MiB:.0f} MiB context"
    return [
        Measurement(f"build, no cache ({label})", "s", False,
                    {name: round(r[0], 3) for name, r in results.items()}),
        Measurement("rebuild, cached", "s", False,
                    {name: round(r[1], 3) for name, r in results.items()}),
    ]
