"""Pulling an image: pybuild's client against skopeo (the peer) and docker pull.

The image has ``layers`` layers, each a tar of ``files`` pseudo-random files written as
pybuild's chunked-frame gzip (one gzip member per content-defined chunk, what ``pybuild
build`` writes). Version 2 changes one file in every layer (~2 % of the files with the
defaults), so every layer blob of v2 is new but most of its frames are not. Both
versions are pushed to a loopback CNCF Distribution and to ``pybuild serve``.

Measured for each client:

- ``pull v1, cold``: into an empty destination (time);
- ``pull v2 over v1``: v2 into the destination that holds v1 (time, and the bytes the
  registry process wrote while serving it, from ``/proc/PID/io``: its socket writes,
  ``sendfile`` included);
- ``copy``: v1 into an empty Distribution, from the Distribution and from the OCI layout
  (``skopeo copy`` against ``pybuild copy``).

Clients: ``skopeo copy docker://... oci:DIR`` (reuses blobs already in its OCI layout),
``docker pull`` (reuses layers by digest) and ``pybuild pull`` - from Distribution (whole
blobs) and from ``pybuild serve``, whose recipe extension lets the client fetch only the
pieces it does not have (column ``pybuild+serve``). pybuild's side is called as
``python3 -m builder pull -q --storage DIR REF``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.data import chunked_layer, pseudo_random
from bench.pybuild_cli import has_command, missing_reason, pybuild_argv, pybuild_env
from bench.report import Measurement
from testkit.docker_engine import docker_engine
from testkit.images import make_image, tar_files, write_oci_layout
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    distribution_argv,
    free_port,
    http,
    pybuild_serve_available,
)
from testkit.registries import pybuild_argv as serve_argv

__all__ = ["ClientBenchError", "bench_client"]

MiB = 1 << 20
REPO = "bench/client"


class ClientBenchError(RuntimeError):
    """A client failed to pull the benchmark image."""


def _timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=1800,
                          stdin=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise ClientBenchError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def _tars(layers: int, layer_size: int, files: int) -> dict[str, list[bytes]]:
    """The layer tars of v1 and v2 (one file of every layer changed)."""
    file_size = max(1, layer_size // files)

    def layer(i: int, changed: bool) -> bytes:
        content = {}
        for f in range(files):
            seed = b"client-%d-%d" % (i, f) + (b"-v2" if changed and f == files // 2 else b"")
            content[f"data/l{i:02d}/f{f:03d}.bin"] = pseudo_random(file_size, seed=seed)
        return tar_files(content)

    return {tag: [layer(i, tag == "v2") for i in range(layers)] for tag in ("v1", "v2")}


def _layout(workdir: Path, tars: dict[str, list[bytes]]) -> tuple[Path, int, int]:
    """An OCI layout with tags v1 and v2 in pybuild's layer format; (layout, v1 layer
    bytes, v2 layer bytes)."""
    v1 = make_image([chunked_layer(t) for t in tars["v1"]])
    v2 = make_image([chunked_layer(t) for t in tars["v2"]])
    layout = write_oci_layout(v1, workdir / "source", ref="v1")
    write_oci_layout(v2, layout, ref="v2")
    return layout, sum(len(x.blob) for x in v1.layers), sum(len(x.blob) for x in v2.layers)


@dataclass(frozen=True)
class _Served:
    registry: RunningRegistry
    pid: int

    def written(self) -> int:
        """Bytes the registry process has written so far (sockets and files)."""
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise ClientBenchError(f"/proc/{self.pid}/io has no wchar line")


@contextmanager
def _serve(kind: str, workdir: Path) -> Iterator[_Served]:
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "distribution":
        process = RegistryProcess(kind, distribution_argv(workdir), storage=workdir / "storage",
                                  log=workdir / "registry.log")
    else:
        process = RegistryProcess(kind, serve_argv(workdir / "storage"),
                                  storage=workdir / "storage", log=workdir / "registry.log",
                                  env=pybuild_env())
    with process as running:
        assert process.pid is not None
        yield _Served(running, process.pid)


def _push(layout: Path, served: _Served) -> None:
    for tag in ("v1", "v2"):
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                        f"docker://{served.registry.ref(REPO, tag)}"],
                       check=True, capture_output=True)


def _measure(pull: Callable[[str], None], served: _Served) -> tuple[float, float, int]:
    """(seconds v1 cold, seconds v2 over v1, bytes the registry wrote for v2).

    Each client starts with nothing left to write back: the previous one (docker's vfs
    storage copies gigabytes) would otherwise be flushed to disk during its timing."""
    os.sync()
    start = time.perf_counter()
    pull("v1")
    cold = time.perf_counter() - start
    before = served.written()
    start = time.perf_counter()
    pull("v2")
    incremental = time.perf_counter() - start
    return cold, incremental, served.written() - before


def _copies(workdir: Path, layout: Path, dist: _Served) -> dict[str, dict[str, float]]:
    """Seconds to copy v1 into an empty Distribution (a new one per copy: nothing to mount,
    nothing known), from the Distribution holding it and from the OCI layout, with
    ``skopeo copy`` and ``pybuild copy`` (which streams such copies: no local store)."""
    sources = {"registry -> registry": f"docker://{dist.registry.ref(REPO, 'v1')}",
               "OCI layout -> registry": f"oci:{layout}:v1"}
    out: dict[str, dict[str, float]] = {}
    for what, src in sources.items():
        out[what] = {}
        for tool in ("skopeo", "pybuild"):
            name = f"copy-{tool}-{what.split()[0].lower()}"
            with _serve("distribution", workdir / name) as fresh:
                dst = fresh.registry.ref(REPO, "v1")
                if tool == "skopeo":
                    argv = ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                            src, f"docker://{dst}"]
                else:
                    argv = pybuild_argv("copy", "-q", "--storage", str(workdir / f"{name}-store"),
                                        src, dst)
                os.sync()
                out[what][tool] = round(_timed(argv, pybuild_env()), 3)
            shutil.rmtree(workdir / name, ignore_errors=True)
    return out


def _push_v2_over_v1(workdir: Path, layout: Path, total_v2: int) -> list[Measurement]:
    """Pushing v2 to a registry that holds v1 (a CI runner publishing an update): seconds,
    and MB the registry received for v2. ``pybuild push`` from its local store to ``pybuild
    serve`` (piece-level: only the pieces the registry lacks; column ``pybuild+serve``) and
    to Distribution (whole changed layers; ``pybuild``), ``skopeo copy`` from the OCI
    layout and ``docker push`` to Distribution. Bytes received: ``pybuild serve``'s
    metrics, Distribution's ``rchar`` in ``/proc/PID/io`` (its socket reads)."""
    seconds: dict[str, float] = {}
    received: dict[str, float] = {}

    def rchar(pid: int) -> int:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise ClientBenchError(f"/proc/{pid}/io has no rchar line")

    def pybuild_push(column: str, served: RunningRegistry, bytes_in: Callable[[], float]) -> None:
        store = workdir / f"push-{column}-store"
        refs = {tag: served.ref(REPO, tag) for tag in ("v1", "v2")}
        for tag, ref in refs.items():  # what a build left in the local store
            _timed(pybuild_argv("copy", "-q", "--storage", str(store), f"oci:{layout}:{tag}",
                                f"local:{ref}"), pybuild_env())
        _timed(pybuild_argv("push", "-q", "--storage", str(store), refs["v1"]), pybuild_env())
        before = bytes_in()
        os.sync()
        seconds[column] = _timed(pybuild_argv("push", "-q", "--storage", str(store), refs["v2"]),
                                 pybuild_env())
        received[column] = bytes_in() - before

    if has_command("push"):
        with _serve("distribution", workdir / "push-pybuild") as dist:
            pybuild_push("pybuild", dist.registry, lambda: float(rchar(dist.pid)))
        if pybuild_serve_available():
            debug = f"127.0.0.1:{free_port()}"
            config = workdir / "push-serve.yaml"
            config.write_text(f"http:\n  debug:\n    addr: {debug}\n")

            def metric() -> float:
                text = http(debug, "GET", "/metrics").body.decode()
                found = re.search(r"^pybuild_registry_bytes_received_total (\S+)$", text, re.M)
                return float(found.group(1)) if found else 0.0

            process = RegistryProcess("pybuild", serve_argv(workdir / "push-serve", config=config),
                                      storage=workdir / "push-serve", log=workdir / "push-serve.log",
                                      env=pybuild_env())
            with process as own:
                pybuild_push("pybuild+serve", own, metric)
    with _serve("distribution", workdir / "push-skopeo") as dist:
        refs = {tag: dist.registry.ref(REPO, tag) for tag in ("v1", "v2")}

        def skopeo_push(tag: str, ref: str) -> float:
            return _timed(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                           f"docker://{ref}"])

        skopeo_push("v1", refs["v1"])
        before = rchar(dist.pid)
        os.sync()
        seconds["skopeo"] = skopeo_push("v2", refs["v2"])
        received["skopeo"] = rchar(dist.pid) - before
        if shutil.which("dockerd"):
            with docker_engine() as engine, \
                    _serve("distribution", workdir / "push-docker") as dst:
                targets = {tag: dst.registry.ref(REPO, tag) for tag in refs}
                for tag, ref in refs.items():
                    engine.run("pull", "-q", ref, timeout=1800)
                    engine.run("tag", ref, targets[tag])
                engine.run("push", "-q", targets["v1"], timeout=1800)
                before = rchar(dst.pid)
                os.sync()
                start = time.perf_counter()
                engine.run("push", "-q", targets["v2"], timeout=1800)
                seconds["docker"] = time.perf_counter() - start
                received["docker"] = rchar(dst.pid) - before
                engine.run("rmi", "--force", *refs.values(), *targets.values(), check=False)
    return [
        Measurement("push v2 over v1 (the registry holds v1)", "s", False,
                    {k: round(v, 3) for k, v in seconds.items()}),
        Measurement(f"push v2 over v1: MB received (v2 layers {total_v2 / 1e6:.1f} MB)", "MB", False,
                    {k: round(v / 1e6, 2) for k, v in received.items()}),
    ]


def bench_client(workdir: Path, *, layers: int, layer_size: int, files: int,
                 report_skip: Callable[[str, str], None], formats: bool = True,
                 shaped: bool = True, shaped_only: bool = False,
                 format_repeats: int = 2) -> list[Measurement]:
    """Time each available client; ``report_skip(client, why)`` for those that are not.
    ``formats``: also the cold pull per layer format (:mod:`bench.formats_bench`), the best
    of ``format_repeats``;
    ``shaped``: also over a shaped link (:mod:`bench.shaped_link`); ``shaped_only``:
    only that."""
    tars = _tars(layers, layer_size, files)
    layout, total_v1, total_v2 = _layout(workdir, tars)
    if shaped_only:
        from bench.shaped_link import bench_shaped

        return bench_shaped(workdir, layout)
    results: dict[str, tuple[float, float, int]] = {}
    with _serve("distribution", workdir / "distribution") as dist:
        _push(layout, dist)

        dest = workdir / "skopeo-dest"

        def skopeo(tag: str) -> None:
            _timed(["skopeo", "copy", "--src-tls-verify=false",
                    f"docker://{dist.registry.ref(REPO, tag)}", f"oci:{dest}:{tag}"])

        results["skopeo"] = _measure(skopeo, dist)
        shutil.rmtree(dest, ignore_errors=True)

        if has_command("pull"):
            def pybuild_from(served: _Served, storage: Path) -> Callable[[str], None]:
                def pull(tag: str) -> None:
                    _timed(pybuild_argv("pull", "-q", "--storage", str(storage),
                                        served.registry.ref(REPO, tag)), pybuild_env())
                return pull

            results["pybuild"] = _measure(pybuild_from(dist, workdir / "pybuild-d"), dist)
            shutil.rmtree(workdir / "pybuild-d", ignore_errors=True)
            if pybuild_serve_available():
                with _serve("pybuild", workdir / "serve") as own:
                    _push(layout, own)
                    results["pybuild+serve"] = _measure(
                        pybuild_from(own, workdir / "pybuild-s"), own)
            else:
                report_skip("pybuild+serve", "`python3 -m builder serve` does not exist yet")
        else:
            report_skip("pybuild", missing_reason("pull"))

        copies = _copies(workdir, layout, dist) if has_command("copy") else {}

        # Docker last: its engine's start, vfs copies and shutdown would otherwise weigh on
        # the clients measured after it.
        if shutil.which("dockerd"):
            with docker_engine() as engine:
                refs = [dist.registry.ref(REPO, tag) for tag in ("v1", "v2")]
                engine.run("rmi", "--force", *refs, check=False)

                def docker(tag: str) -> None:
                    engine.run("pull", "-q", dist.registry.ref(REPO, tag), timeout=1800)

                results["docker"] = _measure(docker, dist)
                engine.run("rmi", "--force", *refs, check=False)
        else:
            report_skip("docker", "docker.io (dockerd) is not installed")

    label = (f"{layers} layers x {files} files, {total_v1 / 1e6:.0f} MB compressed")
    copied = [Measurement(f"copy {what} (an empty Distribution)", "s", False, values)
              for what, values in copies.items()]
    extra: list[Measurement] = []
    if formats and has_command("pull"):
        from bench.formats_bench import bench_formats

        extra += bench_formats(workdir, tars, repeats=format_repeats)
    if shaped and has_command("pull"):
        from bench.shaped_link import ShapedLinkUnavailable, bench_shaped

        try:
            extra += bench_shaped(workdir, layout)
        except ShapedLinkUnavailable as exc:
            report_skip("shaped link", str(exc))
    return [
        Measurement(f"pull v1, cold ({label})", "s", False,
                    {k: round(v[0], 3) for k, v in results.items()}),
        Measurement("pull v1, cold", "MB/s", True,
                    {k: round(total_v1 / v[0] / 1e6, 1) for k, v in results.items()}),
        Measurement(f"pull v2 over v1 (1 of {files} files changed per layer)", "s", False,
                    {k: round(v[1], 3) for k, v in results.items()}),
        Measurement(f"pull v2 over v1: bytes served (v2 layers {total_v2 / 1e6:.1f} MB)",
                    "MB", False, {k: round(v[2] / 1e6, 2) for k, v in results.items()}),
        *copied,
        *_push_v2_over_v1(workdir, layout, total_v2),
        *extra,
    ]
