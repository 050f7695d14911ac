"""Pull-through caches: pybuild's ``serve`` with ``proxy`` against CNCF Distribution's proxy.

One *upstream*, a plain CNCF Distribution (Debian's ``docker-registry``), holds the
registry benchmark's ten-version corpus (:func:`bench.registry_bench.version_images`:
chunked-frame layers, each version rewriting 2 % of the files). Two *mirrors* pull
through from it over loopback HTTP:

- ``distribution``: Distribution with ``proxy.remoteurl`` (the peer);
- ``pybuild``: ``python3 -m builder serve --config F`` with ``proxy: {remoteurl: ...}``.

Both ask the upstream for a tag on every pull (Distribution always does; pybuild's
``ttl`` is 0 by default). For each mirror and each client (``skopeo copy docker://...
oci:DIR`` and ``python3 -m builder pull -q --storage DIR``), both mirrors are started
side by side with empty storage, and:

- ``cold pull``: v1 through the mirror, the first time (the mirror fetches it upstream);
  ``cold_rounds`` times, each through a new pair of mirrors with empty storage (median);
- ``warm pull``: v1 again into a new, empty destination (the median of ``repeats``),
  alternating between the two mirrors, the order swapped every round;
- ``mirror CPU``: user + system seconds of the mirror process during the pull (all
  threads, from ``/proc/PID/stat``): less noisy than time on a shared machine;
- ``upstream bytes``: what the upstream served during each, the sum of the sizes of
  its ``GET`` lines in Distribution's access log (bodies, not headers);
- with skopeo, the other versions are then pulled through too, one after the other:
  the mirror's storage (allocated bytes of its storage directory, ``st_blocks``, hard
  links once) and the upstream bytes for all ten.

Every client starts after a ``sync``, so none pays for the writeback of another.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.pybuild_cli import has_command, missing_reason, pybuild_argv, pybuild_env
from bench.registry_bench import (
    RegistrySettings,
    allocated_bytes,
    push_versions,
    version_images,
)
from bench.report import Measurement
from testkit.images import Image
from testkit.registries import (
    RegistryProcess,
    distribution_config,
    pybuild_serve_available,
)

__all__ = ["ProxyBenchError", "ProxySettings", "UpstreamLog", "bench_proxy"]

MiB = 1 << 20
REPO = "bench/versions"
_GET_LINE = re.compile(r'"GET (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-) ')


class ProxyBenchError(RuntimeError):
    """A mirror or a client failed during the proxy benchmark."""


@dataclass(frozen=True)
class ProxySettings:
    """The corpus (as the registry benchmark's storage metric) and the repeats."""

    corpus: RegistrySettings = field(default_factory=RegistrySettings)
    repeats: int = 9  # warm pulls; the median is reported
    cold_rounds: int = 3  # cold pulls, each through new mirrors; the median is reported


class UpstreamLog:
    """What the upstream served, read from Distribution's access log (one line per
    request, written when the response is complete)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mark = 0

    def _settled_size(self) -> int:
        # A line is written once its response is done, a moment after the client has
        # its last byte: wait until the log stops growing.
        size = self.path.stat().st_size
        while True:
            time.sleep(0.2)
            now = self.path.stat().st_size
            if now == size:
                return size
            size = now

    def mark(self) -> None:
        """Start counting from here."""
        self._mark = self._settled_size()

    def served(self) -> tuple[int, int]:
        """(body bytes of GETs, blob GETs) since :meth:`mark`."""
        end = self._settled_size()
        with open(self.path, "rb") as f:
            f.seek(self._mark)
            text = f.read(end - self._mark).decode(errors="replace")
        return count_gets(text)


def count_gets(text: str) -> tuple[int, int]:
    """(body bytes, blob GETs) of the ``GET`` lines of a Distribution access log."""
    total = blobs = 0
    for m in _GET_LINE.finditer(text):
        if m.group(3) != "-":
            total += int(m.group(3))
        if "/blobs/" in m.group(1) and m.group(2).startswith("2"):
            blobs += 1
    return total, blobs


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    os.sync()
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=1800,
                          stdin=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise ProxyBenchError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


@dataclass(frozen=True)
class _Mirror:
    addr: str
    storage: Path
    pid: int

    def cpu(self) -> float:
        """CPU seconds the mirror process has used so far (user + system, all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _mirror(kind: str, workdir: Path, upstream: str) -> Iterator[_Mirror]:
    """A mirror of ``kind`` with empty storage under ``workdir``."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    storage = workdir / "storage"
    config = workdir / "config.yml"
    env: dict[str, str] | None = None
    if kind == "distribution":
        binary = shutil.which("docker-registry")
        if binary is None:
            raise ProxyBenchError("docker-registry is not installed; install docker-registry")

        def argv(addr: str) -> list[str]:
            config.write_text(distribution_config(storage, addr)
                              + f"proxy:\n  remoteurl: http://{upstream}\n")
            return [binary, "serve", str(config)]
    else:
        config.write_text(json.dumps({"proxy": {"remoteurl": f"http://{upstream}"}}))
        env = pybuild_env()

        def argv(addr: str) -> list[str]:
            return [*pybuild_argv("serve", "--addr", addr, "--storage", str(storage),
                                  "--config", str(config))]

    process = RegistryProcess(kind, argv, storage=storage, log=workdir / "registry.log", env=env)
    try:
        with process as running:
            assert process.pid is not None
            yield _Mirror(running.addr, storage, process.pid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class _Pulls:
    cold: float
    warm: float
    cold_bytes: int
    warm_bytes: int
    cold_blob_gets: int
    cold_cpu: float = 0.0
    warm_cpu: float = 0.0
    storage: int | None = None
    all_bytes: int | None = None


def _pull_command(client: str, mirror: str, tag: str, dest: Path) -> list[str]:
    ref = f"{mirror}/{REPO}:{tag}"
    if client == "skopeo":
        return ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:{tag}"]
    return pybuild_argv("pull", "-q", "--storage", str(dest), ref)


def _measure(client: str, kinds: Sequence[str], workdir: Path, upstream: str,
             log: UpstreamLog, settings: ProxySettings, versions: int) -> dict[str, _Pulls]:
    """Both mirrors run side by side, each with empty storage: v1 cold through each (a
    new pair of mirrors for every cold round), then the warm pulls alternate between the
    last pair; the order is swapped every round, so a busy moment of the machine falls
    on both alike."""
    env = pybuild_env() if client == "pybuild" else None
    dest = workdir / "dest"

    def pull(addr: str, tag: str) -> float:
        shutil.rmtree(dest, ignore_errors=True)
        try:
            return _run(_pull_command(client, addr, tag, dest), env)
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def order(r: int) -> list[str]:
        return list(kinds) if r % 2 == 0 else list(reversed(kinds))

    repeats = settings.repeats
    with ExitStack() as stack:
        cold: dict[str, list[tuple[float, int, int, float]]] = {kind: [] for kind in kinds}
        for r in range(settings.cold_rounds):
            stack.close()
            mirrors = {kind: stack.enter_context(
                _mirror(kind, workdir / f"mirror-{kind}-{client}", upstream)) for kind in kinds}
            for kind in order(r):
                log.mark()
                cpu = mirrors[kind].cpu()
                seconds = pull(mirrors[kind].addr, "v1")
                cold[kind].append((seconds, *log.served(), mirrors[kind].cpu() - cpu))
        results: dict[str, _Pulls] = {}
        for kind, rounds in cold.items():
            results[kind] = _Pulls(
                statistics.median(c[0] for c in rounds), 0.0,
                rounds[-1][1], 0, rounds[-1][2], statistics.mean(c[3] for c in rounds))
        warm: dict[str, list[float]] = {kind: [] for kind in kinds}
        for r in range(repeats):
            for kind in order(r):
                log.mark()
                cpu = mirrors[kind].cpu()
                warm[kind].append(pull(mirrors[kind].addr, "v1"))
                results[kind].warm_cpu += (mirrors[kind].cpu() - cpu) / repeats
                results[kind].warm_bytes += log.served()[0]
        for kind, times in warm.items():
            results[kind].warm = statistics.median(times)
            results[kind].warm_bytes //= repeats
        if client == "skopeo":
            for kind, mirror in mirrors.items():
                log.mark()
                for v in range(2, versions + 1):
                    pull(mirror.addr, f"v{v}")
                results[kind].all_bytes = results[kind].cold_bytes + log.served()[0]
                results[kind].storage = allocated_bytes(mirror.storage)
    return results


def bench_proxy(workdir: Path, settings: ProxySettings,
                report_skip: Callable[[str, str], None]) -> list[Measurement]:
    """Measure both mirrors with every available client; ``report_skip(what, why)``."""
    if shutil.which("docker-registry") is None:
        raise ProxyBenchError("docker-registry is not installed; install docker-registry")
    if shutil.which("skopeo") is None:
        raise ProxyBenchError("skopeo is not installed; install skopeo")
    images = version_images(settings.corpus)
    mirrors = ["distribution"]
    if pybuild_serve_available():
        mirrors.append("pybuild")
    else:
        report_skip("pybuild", missing_reason("serve"))
    clients = ["skopeo"]
    if has_command("pull"):
        clients.append("pybuild")
    else:
        report_skip("pybuild pull", missing_reason("pull"))

    upstream_dir = workdir / "upstream"
    upstream_dir.mkdir(parents=True, exist_ok=True)
    storage = upstream_dir / "storage"

    def upstream_argv(addr: str) -> list[str]:
        config = upstream_dir / "config.yml"
        config.write_text(distribution_config(storage, addr, access_log=True))
        return [str(shutil.which("docker-registry")), "serve", str(config)]

    results: dict[tuple[str, str], _Pulls] = {}
    process = RegistryProcess("upstream", upstream_argv, storage=storage,
                              log=upstream_dir / "registry.log")
    with process as upstream:
        asyncio.run(push_versions(upstream.url, images, REPO))
        log = UpstreamLog(process.log)
        for client in clients:
            measured = _measure(client, mirrors, workdir, upstream.addr, log, settings,
                                len(images))
            results.update({(kind, client): r for kind, r in measured.items()})
    return _measurements(results, images, settings)


def _measurements(results: dict[tuple[str, str], _Pulls], images: Sequence[Image],
                  settings: ProxySettings) -> list[Measurement]:
    corpus = settings.corpus
    v1_bytes = sum(len(b) for b in images[0].blobs().values())
    all_bytes = sum(len(b) for image in images for b in image.blobs().values())
    out: list[Measurement] = []
    clients = list(dict.fromkeys(client for _, client in results))
    for client in clients:
        mine = {kind: r for (kind, c), r in results.items() if c == client}
        label = "skopeo copy" if client == "skopeo" else "pybuild pull"
        image = (f"v1: {corpus.version_layers} layers, {v1_bytes / 1e6:.1f} MB")
        out += [
            Measurement(f"{label}: cold pull ({image}; median of {settings.cold_rounds})", "s",
                        False,
                        {k: round(r.cold, 3) for k, r in mine.items()}),
            Measurement(f"{label}: warm pull (cached; median of {settings.repeats})", "s", False,
                        {k: round(r.warm, 3) for k, r in mine.items()}),
            Measurement(f"{label}: mirror CPU, cold pull", "s", False,
                        {k: round(r.cold_cpu, 3) for k, r in mine.items()},
                        notes="user + system time of the mirror process (mean)"),
            Measurement(f"{label}: mirror CPU, warm pull", "s", False,
                        {k: round(r.warm_cpu, 3) for k, r in mine.items()},
                        notes="mean of the warm pulls"),
            Measurement(f"{label}: upstream bytes, cold pull", "MB", False,
                        {k: round(r.cold_bytes / 1e6, 3) for k, r in mine.items()},
                        notes="body bytes of the upstream's GETs (its access log)"),
            Measurement(f"{label}: upstream blob GETs, cold pull", "count", False,
                        {k: r.cold_blob_gets for k, r in mine.items()}),
            Measurement(f"{label}: upstream bytes, warm pull", "MB", False,
                        {k: round(r.warm_bytes / 1e6, 4) for k, r in mine.items()},
                        notes="manifests asked again: ttl 0 on both"),
        ]
    stored = {kind: r for (kind, c), r in results.items() if c == "skopeo"}
    n = len(images)
    out += [
        Measurement(f"storage after mirroring {n} versions ({all_bytes / 1e6:.0f} MB of blobs)",
                    "MB", False,
                    {k: round((r.storage or 0) / 1e6, 2) for k, r in stored.items()},
                    notes="allocated bytes of the mirror's storage directory"),
        Measurement("storage / blob bytes", "ratio", False,
                    {k: round((r.storage or 0) / all_bytes, 3) for k, r in stored.items()}),
        Measurement(f"upstream bytes, mirroring {n} versions", "MB", False,
                    {k: round((r.all_bytes or 0) / 1e6, 2) for k, r in stored.items()}),
    ]
    return out
