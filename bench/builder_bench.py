"""Building the same Dockerfiles with docker build (BuildKit), buildah and pybuild.

Both start from a busybox image served by a loopback CNCF Distribution.
``workloads/builder.Dockerfile`` COPYs a context of pseudo-random files and runs two RUN
steps; ``workloads/builder-stages.Dockerfile`` COPYs a context of many small files into a
build stage, runs a step there, and takes two files of that stage into the final one
(``COPY --from``). For each builder and each Dockerfile, in this order:

- ``build, cold``: the first build into empty storage (it pulls the base; a Docker
  engine that was already running has its build cache pruned and the base removed first);
- ``build, no cache``: every step executes again (``--no-cache``), the base is local;
- ``rebuild, cached``: nothing changed, every step comes from the cache;
- ``rebuild, one file changed``: one context file rewritten (same size, new bytes), so
  the COPY and both RUN steps run again.

Before each timed build the page cache's dirty data is written back (``sync``, untimed),
so that no build pays for the writeback of the one before it.

pybuild's side is called as ``python3 -m builder build --storage DIR --build-arg
BASE=... -t TAG -f Dockerfile CONTEXT`` once ``build`` exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.data import pseudo_random
from bench.pybuild_cli import has_command, missing_reason, pybuild_argv, pybuild_env
from bench.report import Measurement
from testkit.clients import ContainerStorage
from testkit.docker_engine import docker_client, docker_engine
from testkit.images import busybox_image, write_oci_layout
from testkit.registries import distribution_registry
from testkit.rootfs import make_busybox_rootfs

__all__ = ["BuilderBenchError", "bench_builder"]

MiB = 1 << 20
DOCKERFILE = Path(__file__).resolve().parent / "workloads" / "builder.Dockerfile"
STAGES_DOCKERFILE = Path(__file__).resolve().parent / "workloads" / "builder-stages.Dockerfile"


class BuilderBenchError(RuntimeError):
    """A builder failed on the benchmark's Dockerfile."""


def _timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    # Untimed: write back what earlier builds (of any builder) left dirty, so that no
    # build pays for another's writeback (buildah's vfs storage leaves gigabytes).
    os.sync()
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


def _small_files_context(workdir: Path, files: int) -> Path:
    """A source tree of ``files`` small files (0.5-2.5 KiB) in directories of 50."""
    context = workdir / "stages-context"
    for i in range(files):
        d = context / "src" / f"p{i // 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i % 50}.js").write_bytes(pseudo_random(512 + (i * 37) % 2048, seed=b"src%d" % i))
    shutil.copyfile(STAGES_DOCKERFILE, context / "Dockerfile")
    return context


def _scenarios(build: Callable[[bool], float], context: Path) -> tuple[float, ...]:
    """Seconds of: cold build, no-cache build, cached rebuild, rebuild after one file changed.

    The changed file is put back afterwards so every builder sees the same context.
    """
    changed = sorted((context / "files").iterdir())[0] if (context / "files").is_dir() else (
        context / "src" / "p0" / "f0.js")
    original = changed.read_bytes()
    cold, no_cache, cached = build(False), build(True), build(False)
    changed.write_bytes(pseudo_random(len(original), seed=b"changed"))
    try:
        one_file = build(False)
    finally:
        changed.write_bytes(original)
    return cold, no_cache, cached, one_file


def bench_builder(workdir: Path, *, files: int, file_size: int, small_files: int,
                  report_skip: Callable[[str, str], None]) -> list[Measurement]:
    """Time each available builder; ``report_skip(builder, why)`` for those that are not."""
    contexts = (_context(workdir, files, file_size), _small_files_context(workdir, small_files))
    layout = write_oci_layout(busybox_image(make_busybox_rootfs(workdir / "rootfs")),
                              workdir / "busybox")
    results: dict[str, tuple[float, ...]] = {}
    with distribution_registry(workdir / "registry") as registry:
        base = registry.ref("bench/busybox", "latest")
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                        f"docker://{base}"], check=True, capture_output=True)
        build_arg = f"BASE={base}"

        if shutil.which("dockerd") or shutil.which("docker"):
            with docker_engine() as engine:
                env = dict(engine.env, DOCKER_BUILDKIT="1")
                if not engine.owned:  # a shared engine: make the first build cold anyway
                    engine.run("builder", "prune", "--all", "--force", build=True, check=False)
                    engine.run("rmi", "--force", base, check=False)

                def docker(context: Path) -> Callable[[bool], float]:
                    return lambda no_cache: _timed(
                        [docker_client("build"), "build", "--network", "none",
                         *(["--no-cache"] if no_cache else []),
                         "--build-arg", build_arg, "-t", "pybuild-bench/built", str(context)],
                        env)

                results["docker"] = tuple(t for c in contexts for t in _scenarios(docker(c), c))
                engine.run("rmi", "--force", "pybuild-bench/built", check=False)
        else:
            report_skip("docker", "docker.io is not installed")

        if shutil.which("buildah"):
            storage = ContainerStorage.under(workdir / "buildah")

            def buildah(context: Path) -> Callable[[bool], float]:
                return lambda no_cache: _timed(
                    ["buildah", *storage.options(), "bud", "--isolation", "chroot",
                     "--layers", "--tls-verify=false", *(["--no-cache"] if no_cache else []),
                     "--build-arg", build_arg, "-t", "pybuild-bench/built", str(context)])

            results["buildah"] = tuple(t for c in contexts for t in _scenarios(buildah(c), c))
        else:
            report_skip("buildah", "buildah is not installed")

        if has_command("build"):
            storage_dir = workdir / "pybuild"

            def pybuild(context: Path) -> Callable[[bool], float]:
                return lambda no_cache: _timed(
                    pybuild_argv("build", "--storage", str(storage_dir),
                                 *(["--no-cache"] if no_cache else []),
                                 "--build-arg", build_arg, "-t", "pybuild-bench/built",
                                 "-f", str(context / "Dockerfile"), str(context)),
                    pybuild_env())

            results["pybuild"] = tuple(t for c in contexts for t in _scenarios(pybuild(c), c))
        else:
            report_skip("pybuild", missing_reason("build"))

    label = f"{files} x {file_size / MiB:.0f} MiB context"
    names = (f"build, cold ({label})", "build, no cache", "rebuild, cached",
             "rebuild, one file changed",
             f"multi-stage, cold ({small_files} small files, COPY --from of 2 files)",
             "multi-stage, no cache", "multi-stage, rebuild, cached",
             "multi-stage, rebuild, one file changed")
    return [Measurement(name, "s", False, {k: round(r[i], 3) for k, r in results.items()})
            for i, name in enumerate(names)]
