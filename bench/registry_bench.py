"""Registry throughput, written against a registry *address* so it measures any registry.

Measured for each registry (the peer, CNCF Distribution, and pybuild's ``serve``):

- blob push: one blob (default 1 GiB) uploaded monolithically, ``POST`` then one ``PUT``
  with the whole body and ``?digest=``; MB/s from the POST to the 201;
- blob pull, one client: ``GET`` of that blob, body read and discarded, MB/s;
- blob pull, N concurrent clients (default 4, separate processes so the client is not
  one Python thread): aggregate MB/s = all bytes / (last end - first start);
- manifest GETs/s and p99 latency: ``wrk`` against ``GET /v2/<name>/manifests/<tag>``;
  and, for a registry this harness starts, the CPU time its server process spent per
  request meanwhile (``utime + stime`` from ``/proc/PID/stat``): on a machine shared
  with other work, requests/s fall with every other busy process while a request's CPU
  cost barely moves;
- skopeo copy of a generated 10-layer image, push (OCI layout -> registry) and pull
  (registry -> a fresh OCI layout, median of 3): seconds and MB/s of layer bytes;
- storage: ten versions of an image made of chunked-frame layers (pybuild's layer
  format), each version changing ~2 % of the files of every layer, pushed one after the
  other; the growth of the storage directory's allocated bytes (``st_blocks``), next to
  the sum of the pushed blobs. Only for registries this harness starts.

The aiohttp client discards pulled bytes without hashing them: hashing would cap every
registry at the client's SHA-256 speed (see the machine limits) and hide the server.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from bench.data import chunked_layer, pseudo_random
from bench.report import Measurement
from cas.reserve import RESERVE_FILE
from cas.units import parse_duration
from testkit.images import (
    Image,
    make_image,
    make_layer,
    tar_files,
    write_oci_layout,
)

__all__ = [
    "RegistryBenchError",
    "RegistryData",
    "RegistrySettings",
    "allocated_bytes",
    "bench_registry",
    "parse_wrk",
    "parse_wrk_requests",
    "prepare_data",
    "process_cpu_seconds",
    "push_versions",
    "version_images",
]

MiB = 1 << 20
GiB = 1 << 30
_BODY_CHUNK = MiB


class RegistryBenchError(RuntimeError):
    """A registry answered something unexpected during a benchmark."""


@dataclass(frozen=True)
class RegistrySettings:
    """Sizes and durations of the registry benchmark (``--quick`` shrinks them)."""

    blob_size: int = GiB
    clients: int = 4
    wrk_seconds: int = 10
    wrk_connections: int = 16
    wrk_threads: int = 2
    layers: int = 10
    layer_size: int = 8 * MiB
    pull_repeats: int = 3  # skopeo pulls into a fresh layout; the median is reported
    versions: int = 10  # image versions pushed for the storage metric
    version_layers: int = 4
    version_files: int = 50  # files per layer; each version rewrites one per layer (2 %)
    version_layer_size: int = 10 * MiB


@dataclass(frozen=True)
class RegistryData:
    """Data generated once per run and pushed to every registry."""

    blob: bytes
    blob_digest: str
    small_image: Image
    layout: Path
    layout_bytes: int
    versions: tuple[Image, ...] = ()

    @property
    def versions_bytes(self) -> int:
        """The sum of the sizes of every blob of every version (what a plain store keeps)."""
        return sum(len(b) for image in self.versions for b in image.blobs().values())


def version_images(settings: RegistrySettings) -> tuple[Image, ...]:
    """``settings.versions`` images; version v rewrites file (v * 7) % files of each layer.

    A file's content depends on the last version that rewrote it, so the changes add up
    as they do when an application is rebuilt again and again.
    """
    files = settings.version_files
    file_size = max(1, settings.version_layer_size // files)
    changed = [(v * 7) % files for v in range(settings.versions)]
    images = []
    for v in range(settings.versions):
        layers = []
        for i in range(settings.version_layers):
            content = {}
            for f in range(files):
                last = max((u for u in range(1, v + 1) if changed[u] == f), default=0)
                seed = b"version-%d-%d-%d" % (i, f, last)
                content[f"app/l{i}/f{f:03d}.bin"] = pseudo_random(file_size, seed=seed)
            layers.append(chunked_layer(tar_files(content)))
        images.append(make_image(layers, created_by=[f"version {v + 1}, layer {i}"
                                                     for i in range(len(layers))]))
    return tuple(images)


def prepare_data(workdir: Path, settings: RegistrySettings) -> RegistryData:
    """Generate the big blob, a small image (for manifest GETs) and the 10-layer layout."""
    import hashlib

    blob = pseudo_random(settings.blob_size, seed=b"registry-blob")
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    small = make_image([make_layer(tar_files({"hello.txt": b"hello\n"}))])
    layers = [
        make_layer(
            tar_files({f"data/layer{i}.bin": pseudo_random(settings.layer_size, seed=b"layer%d" % i)}),
            level=1,
        )
        for i in range(settings.layers)
    ]
    image = make_image(layers)
    layout = write_oci_layout(image, workdir / "ten-layers", ref="latest")
    return RegistryData(
        blob=blob,
        blob_digest=digest,
        small_image=small,
        layout=layout,
        layout_bytes=sum(len(layer.blob) for layer in layers),
        versions=version_images(settings),
    )


async def _chunks(data: bytes) -> AsyncIterator[memoryview]:
    """The body of a PUT, 1 MiB at a time, as a client streaming from a file sends it.

    Handed the whole blob at once, asyncio's transport copies what the socket did not
    take into a buffer of its own: for 1 GiB that is 3-5 s of client CPU (mostly page
    faults) on the cores the registry under test needs, for either registry alike.
    """
    view = memoryview(data)
    for start in range(0, len(view), _BODY_CHUNK):
        yield view[start : start + _BODY_CHUNK]


def allocated_bytes(root: Path) -> int:
    """Bytes allocated on disk under ``root`` (``st_blocks``; hard links counted once),
    but a pybuild store's reserve (room kept back for a full disk, no stored data)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name == RESERVE_FILE:  # (Distribution's files are named data and link)
                continue
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


async def _push_versions(base: str, versions: tuple[Image, ...],
                         repo: str = "bench/versions") -> None:
    """Push ``versions`` one after the other to ``repo`` at ``base``, tagged v1, v2, ..."""
    async with _session() as session:
        for v, image in enumerate(versions, 1):
            await _put_manifest(session, base, repo, f"v{v}", image)


push_versions = _push_versions  # also pushes the proxy benchmark's upstream


async def _push_blob(
    session: aiohttp.ClientSession, base: str, repo: str, data: bytes, digest: str
) -> None:
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise RegistryBenchError(f"POST upload answered {resp.status}: {await resp.text()}")
        location = urljoin(base + "/", resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    async with session.put(
        f"{location}{sep}digest={digest}",
        data=_chunks(data),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    ) as resp:
        if resp.status != 201:
            raise RegistryBenchError(f"PUT upload answered {resp.status}: {await resp.text()}")


async def _put_manifest(session: aiohttp.ClientSession, base: str, repo: str, tag: str,
                        image: Image) -> None:
    for digest, data in image.blobs().items():
        await _push_blob(session, base, repo, data, digest)
    async with session.put(
        f"{base}/v2/{repo}/manifests/{tag}",
        data=image.manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as resp:
        if resp.status != 201:
            raise RegistryBenchError(f"PUT manifest answered {resp.status}: {await resp.text()}")


async def _pull_blob(session: aiohttp.ClientSession, url: str) -> int:
    received = 0
    async with session.get(url) as resp:
        if resp.status != 200:
            raise RegistryBenchError(f"GET {url} answered {resp.status}")
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                break
            received += len(chunk)
    return received


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_read=300)
    )


async def _push_and_pull(base: str, data: RegistryData) -> tuple[float, float]:
    async with _session() as session:
        start = time.perf_counter()
        await _push_blob(session, base, "bench/blob", data.blob, data.blob_digest)
        push = time.perf_counter() - start
        url = f"{base}/v2/bench/blob/blobs/{data.blob_digest}"
        await _pull_blob(session, url)  # warm: the first read may come from disk
        start = time.perf_counter()
        received = await _pull_blob(session, url)
        pull = time.perf_counter() - start
        if received != len(data.blob):
            raise RegistryBenchError(f"pulled {received} bytes of {len(data.blob)}")
        await _put_manifest(session, base, "bench/manifest", "v1", data.small_image)
    return push, pull


def _pull_in_process(url: str, start_at: float) -> tuple[float, float, int]:
    """One concurrent client (runs in its own process): wait for ``start_at``, pull once."""

    async def go() -> tuple[float, float, int]:
        async with _session() as session:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            start = time.time()
            received = await _pull_blob(session, url)
            return start, time.time(), received

    return asyncio.run(go())


def _worker_ready(_: int) -> int:
    """A pool worker's pid, once it has started and imported this module (as a pull does);
    it takes a moment, so that one worker does not take every other's warm-up task."""
    time.sleep(0.05)
    return os.getpid()


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _client_pool(clients: int) -> ProcessPoolExecutor:
    """The run's pool of ``clients`` client processes, started on first use and kept for
    every later concurrent pull (each spawned process imports aiohttp: ~0.5 s of CPU)."""
    pool = _POOLS.get(clients)
    if pool is None:
        pool = _POOLS[clients] = ProcessPoolExecutor(max_workers=clients,
                                                     mp_context=get_context("spawn"))
        atexit.register(pool.shutdown)
    return pool


def _concurrent_pull(url: str, clients: int) -> float:
    """Aggregate MB/s of ``clients`` processes pulling ``url`` at once."""
    pool = _client_pool(clients)
    ready: set[int] = set()
    for _ in range(20):  # until every worker process has started and answered
        ready.update(pool.map(_worker_ready, range(clients)))
        if len(ready) >= clients:
            break
    start_at = time.time() + 0.3  # once each idle worker has been handed its pull
    results = list(pool.map(_pull_in_process, [url] * clients, [start_at] * clients))
    first = min(r[0] for r in results)
    last = max(r[1] for r in results)
    return sum(r[2] for r in results) / (last - first) / 1e6


_WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_P99 = re.compile(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)


def parse_wrk(output: str) -> tuple[float, float]:
    """(requests/s, p99 latency in ms) from ``wrk --latency`` output."""
    rate = _WRK_RATE.search(output)
    p99 = _WRK_P99.search(output)
    if rate is None or p99 is None:
        raise RegistryBenchError(f"cannot read wrk's output:\n{output}")
    errors = _WRK_ERRORS.search(output)
    if errors:
        raise RegistryBenchError(f"wrk saw {errors.group(1)} error responses:\n{output}")
    return float(rate.group(1)), parse_duration(p99.group(1) + p99.group(2)) / 1e6


def parse_wrk_requests(output: str) -> int:
    """How many requests a ``wrk`` run completed."""
    found = _WRK_REQUESTS.search(output)
    if found is None:
        raise RegistryBenchError(f"cannot read wrk's request count:\n{output}")
    return int(found.group(1))


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command's ")": state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk_manifests(
    addr: str, settings: RegistrySettings, pid: int | None
) -> tuple[float, float, float | None]:
    """(requests/s, p99 ms, the server's CPU seconds per request or None without ``pid``)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RegistryBenchError("wrk is not installed; install wrk")
    cpu_before = process_cpu_seconds(pid) if pid is not None else 0.0
    proc = subprocess.run(
        [wrk, f"-t{settings.wrk_threads}", f"-c{settings.wrk_connections}",
         f"-d{settings.wrk_seconds}s", "--latency",
         "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
         f"http://{addr}/v2/bench/manifest/manifests/v1"],
        capture_output=True, text=True, timeout=settings.wrk_seconds + 60,
        check=False,
    )
    cpu = process_cpu_seconds(pid) - cpu_before if pid is not None else None
    if proc.returncode != 0:
        raise RegistryBenchError(f"wrk exited {proc.returncode}: {proc.stderr}")
    rate, p99 = parse_wrk(proc.stdout)
    per_request = cpu / max(parse_wrk_requests(proc.stdout), 1) if cpu is not None else None
    return rate, p99, per_request


def _skopeo_copy(src: str, dest: str) -> float:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise RegistryBenchError("skopeo is not installed; install skopeo")
    start = time.perf_counter()
    proc = subprocess.run(
        [skopeo, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", src, dest],
        capture_output=True, text=True, timeout=1800,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RegistryBenchError(f"skopeo copy {src} {dest} failed:\n{proc.stderr}")
    return elapsed


def _skopeo_push_and_pulls(target: str, addr: str, data: RegistryData, settings: RegistrySettings,
                           workdir: Path, pulls: int | None = None) -> tuple[float, float]:
    """Seconds of a ``skopeo copy`` push of ``data.layout`` and the median of its pulls
    (``settings.pull_repeats`` unless ``pulls`` says how many; 0: none, and 0.0)."""
    ref = f"docker://{addr}/bench/ten-layers:latest"
    skopeo_push = _skopeo_copy(f"oci:{data.layout}:latest", ref)
    pushed_manifest = json.loads((data.layout / "index.json").read_text())["manifests"][0]["digest"]
    times = []
    for _ in range(settings.pull_repeats if pulls is None else pulls):
        pulled = workdir / f"pulled-{target}"
        shutil.rmtree(pulled, ignore_errors=True)
        times.append(_skopeo_copy(ref, f"oci:{pulled}:latest"))
        pulled_manifest = json.loads((pulled / "index.json").read_text())["manifests"][0]["digest"]
        if pulled_manifest != pushed_manifest:
            raise RegistryBenchError(f"skopeo pulled {pulled_manifest}, pushed {pushed_manifest}")
        shutil.rmtree(pulled, ignore_errors=True)
    # One pull takes about a second: the median of a few hides a stray busy moment.
    return skopeo_push, statistics.median(times) if times else 0.0


def bench_registry(
    target: str, addr: str, data: RegistryData, settings: RegistrySettings, workdir: Path,
    storage: Path | Callable[[], int] | None = None, storage_label: str = "storage",
    pid: int | None = None,
) -> list[Measurement]:
    """Measure the registry at ``addr`` (``host:port``, plain HTTP); label values ``target``.
    ``pid``: its server process, when it runs on this machine (CPU per request).

    ``storage`` is the registry's storage directory when the harness started it (or a
    function giving the bytes its storage holds, e.g. a bucket's): then the storage growth
    of pushing ``data.versions`` is measured too, named ``storage_label``.
    """
    base = f"http://{addr}"
    mb = len(data.blob) / 1e6
    push, pull = asyncio.run(_push_and_pull(base, data))
    concurrent = _concurrent_pull(f"{base}/v2/bench/blob/blobs/{data.blob_digest}",
                                  settings.clients)
    rate, p99, cpu_per_request = _wrk_manifests(addr, settings, pid)
    skopeo_push, skopeo_pull = _skopeo_push_and_pulls(target, addr, data, settings, workdir)
    size = f"{len(data.blob) / MiB:.0f} MiB"
    layers = f"{settings.layers} x {settings.layer_size / MiB:.0f} MiB layers"
    lmb = data.layout_bytes / 1e6

    def one(name: str, unit: str, value: float, higher: bool = True, notes: str = "") -> Measurement:
        return Measurement(name, unit, higher, {target: round(value, 3)}, notes)

    stored: list[Measurement] = []
    if storage is not None and data.versions:
        measure = storage if callable(storage) else (lambda: allocated_bytes(storage))
        before = measure()
        asyncio.run(_push_versions(base, data.versions))
        grown = measure() - before
        vlabel = (f"{len(data.versions)} versions x {settings.version_layers} chunked-frame "
                  f"layers, {data.versions_bytes / 1e6:.0f} MB pushed")
        stored = [
            one(f"{storage_label} after {vlabel}", "MB", grown / 1e6, higher=False,
                notes="growth of allocated bytes in the storage directory" if not callable(storage)
                else f"growth of {storage_label}"),
            one("storage / bytes pushed", "ratio", grown / data.versions_bytes, higher=False),
        ]
    return [
        one(f"blob push {size} (POST+PUT)", "MB/s", mb / push),
        one(f"blob pull {size}, 1 client", "MB/s", mb / pull),
        one(f"blob pull {size}, {settings.clients} clients", "MB/s", concurrent,
            notes="aggregate over all clients"),
        one("manifest GET", "req/s", rate,
            notes=f"wrk -t{settings.wrk_threads} -c{settings.wrk_connections} -d{settings.wrk_seconds}s"),
        one("manifest GET p99", "ms", p99, higher=False),
        *([one("manifest GET: server CPU per request", "us", cpu_per_request * 1e6,
               higher=False, notes="utime+stime of the server process during the wrk run")]
          if cpu_per_request is not None else []),
        one(f"skopeo copy push ({layers})", "s", skopeo_push, higher=False),
        one(f"skopeo copy pull ({layers})", "s", skopeo_pull, higher=False),
        one("skopeo copy push", "MB/s", lmb / skopeo_push),
        one("skopeo copy pull", "MB/s", lmb / skopeo_pull),
        *stored,
    ]
