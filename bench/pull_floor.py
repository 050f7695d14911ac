"""How close is a cold pull to the least a verified, durable pull can do on this machine?
``python3 -m bench.pull_floor [--rounds 5] [--layers 10] [--layer-mib 50] [--files 50]``.

Pushes the ``client`` area's image (``--layers`` layers of pybuild's chunked gzip) to a
loopback CNCF Distribution, then pulls it into an empty destination, alternately, with:

- ``floor``: ``bench/pull_floor.c`` (built here with ``gcc``, OpenSSL's libcrypto): one
  thread and one GET per blob, every byte into SHA-256 and written with O_DIRECT, one
  ``fdatasync`` per blob, the digest compared. Nothing else: no piece keys (pybuild's
  BLAKE3), no metadata, no interpreter to start. No real client does less and is still
  verified and durable.
- ``floor, page cache``: the same written through the page cache.
- ``pybuild``: ``pybuild pull -q --storage DIR REF``.
- ``skopeo``: ``skopeo copy docker://REF oci:DIR:v1``.

Each pull starts after a ``sync``. Prints every round (wall seconds, the client's CPU
seconds, the registry's CPU seconds serving it) and each column's median. Needs ``gcc``
and ``libssl-dev`` (Debian), ``docker-registry`` and ``skopeo``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.client_bench import REPO, _layout, _push, _serve, _tars
from bench.pybuild_cli import pybuild_argv, pybuild_env

SOURCE = Path(__file__).with_name("pull_floor.c")


def _build(workdir: Path) -> Path:
    binary = workdir / "pull_floor"
    proc = subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE), "-lcrypto", "-lpthread",
                           "-Wno-deprecated-declarations"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"building {SOURCE.name} failed (needs gcc and libssl-dev):\n{proc.stderr}")
    return binary


def _cpu(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, the child's CPU seconds) of one command that must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--layer-mib", type=int, default=50)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pull-floor-") as tmp:
        work = Path(tmp)
        binary = _build(work)
        layout, size, _ = _layout(work, _tars(args.layers, args.layer_mib << 20, args.files))
        with _serve("distribution", work / "distribution") as dist:
            _push(layout, dist)
            ref = dist.registry.ref(REPO, "v1")
            host, _, port = ref.split("/")[0].rpartition(":")
            request = urllib.request.Request(f"http://{host}:{port}/v2/{REPO}/manifests/v1", headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json"})
            with urllib.request.urlopen(request) as resp:
                manifest = json.load(resp)
            digests = [d["digest"] for d in (*manifest["layers"], manifest["config"])]
            env = pybuild_env()
            columns: dict[str, Callable[[Path], list[str]]] = {
                "floor": lambda out: [str(binary), host, port, REPO, str(out), "1", *digests],
                "floor, page cache": lambda out: [str(binary), host, port, REPO, str(out), "0", *digests],
                "pybuild": lambda out: pybuild_argv("pull", "-q", "--storage", str(out), ref),
                "skopeo": lambda out: ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}",
                                       f"oci:{out}:v1"],
            }
            rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in columns}
            print(f"{len(digests)} blobs, {size / 1e6:.0f} MB of layers")
            for round_ in range(args.rounds):
                for name, argv in columns.items():
                    out = work / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    os.sync()
                    served = _cpu(dist.pid)
                    wall, cpu = _run(argv(out), env if name == "pybuild" else None)
                    rows[name].append((wall, cpu, _cpu(dist.pid) - served))
                    print(f"round {round_ + 1} {name:18} {wall:6.3f} s wall, client CPU {cpu:5.2f} s, "
                          f"registry CPU {rows[name][-1][2]:5.2f} s", flush=True)
            print("median:")
            for name, got in rows.items():
                wall, cpu, served = (statistics.median(x[i] for x in got) for i in range(3))
                print(f"  {name:18} {wall:6.3f} s wall, client CPU {cpu:5.2f} s, registry CPU {served:5.2f} s")


if __name__ == "__main__":
    main()
