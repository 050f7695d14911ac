"""Blob pulls from a registry whose packs are in S3: ``python3 -m bench.s3_serving``.

Starts a private radosgw (``testkit.ceph``), then measures in the same run:

- **store**: reading one blob (``--mib`` MiB of random bytes, ~300 KiB pieces) through
  ``Store.segments``: pieces loaded one after another (the read path before read-ahead),
  fetched ahead in coalesced ranged reads with no cache, and from a warm piece cache;
- **HTTP**: ``GET /v2/<name>/blobs/<digest>`` from ``pybuild serve --packs s3://...``,
  the first GET (fetched ahead, filling the cache) and the best of three later ones
  (the cache's files, ``sendfile``); with ``--before DIR`` also a server run from the
  checkout DIR (an older version, e.g. ``git archive main``).

Each figure is the best of ``--rounds`` rounds, in MB/s; for the HTTP GETs also the
server's CPU time (user + system) per GB sent, a figure other load hardly moves. Needs root and Debian's ceph
packages.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from cas import StoreConfig
from cas.open import open_store
from cas.s3_location import S3Location
from testkit.ceph import RadosGateway
from testkit.registries import RegistryProcess, _python_env, http, pybuild_argv

BUCKET = "bench-serving"


def _location(gw: RadosGateway, prefix: str) -> S3Location:
    c = gw.credentials
    assert c is not None
    return S3Location(c.endpoint.removeprefix("http://"), BUCKET, prefix, c.access_key, c.secret_key,
                      c.region, secure=False)


async def _store(gw: RadosGateway, work: Path, blob: bytes, rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with await open_store(StoreConfig(work / "store", s3=_location(gw, "store/"))) as store:
        info = await store.put(blob)
        remote = store.core.remote
        assert remote is not None
        cache = remote.cache

        async def timed(label: str) -> None:
            best = 0.0
            for _ in range(rounds):
                t = time.perf_counter()
                n = 0
                async for seg in store.segments(info.digest):
                    if seg.path is not None:
                        fd = os.open(seg.path, os.O_RDONLY)
                        try:
                            n += len(os.pread(fd, seg.length, seg.offset))
                        finally:
                            os.close(fd)
                    else:
                        n += seg.length
                assert n == len(blob)
                best = max(best, len(blob) / (time.perf_counter() - t) / 1e6)
            out[label] = round(best, 1)

        store.core.remote = None
        await timed("store: pieces one after another (before)")
        store.core.remote = remote
        remote.cache = None
        await timed("store: fetched ahead, no cache")
        remote.cache = cache
        for _ in range(5):  # fill the cache (pieces its writer could not take wait for a later read)
            skipped = remote.skipped
            async for _seg in store.segments(info.digest):
                pass
            remote.flush()
            if remote.skipped == skipped:
                break
        await timed("store: warm piece cache")
    return out


def _http(gw: RadosGateway, work: Path, blob: bytes, rounds: int, name: str,
          checkout: Path | None, cache_bytes: int | None) -> dict[str, float]:
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    storage = work / name.replace(",", "").replace(" ", "-")
    url = _location(gw, f"{storage.name}/").to_url(keys=True)
    env = _python_env(checkout)
    if cache_bytes is not None:
        env["PYBUILD_CACHE_PIECES_BYTES"] = str(cache_bytes)
    base = pybuild_argv(storage)

    def argv(addr: str) -> list[str]:
        cmd = [*base(addr), "--packs", url]
        if checkout is not None:  # ahead of the current directory, which `-m` puts first
            cmd[1:3] = ["-c", f"import runpy, sys; sys.path.insert(0, {str(checkout)!r}); "
                              "import cas; print('cas from', cas.__file__, flush=True); "
                              "runpy.run_module('builder', run_name='__main__')"]
        return cmd

    out: dict[str, float] = {}
    with RegistryProcess("pybuild", argv, storage=storage,
                         log=work / f"{storage.name}.log", env=env) as reg:
        pid = reg.pid
        assert pid is not None
        put = http(reg.addr, "POST", f"/v2/bench/blobs/uploads/?digest={digest}", body=blob, timeout=300)
        assert put.status == 201, put.body

        cpu: list[float] = []

        def get() -> float:
            # curl: a client that is not the bottleneck; the bytes are checked apart.
            c = _cpu_seconds(pid)
            t = time.perf_counter()
            done = subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-w", "%{size_download}",
                                   f"http://{reg.addr}/v2/bench/blobs/{digest}"],
                                  capture_output=True, text=True, check=True, timeout=300)
            dt = time.perf_counter() - t
            cpu.append(_cpu_seconds(pid) - c)
            assert int(done.stdout) == len(blob)
            return round(len(blob) / dt / 1e6, 1)

        def check() -> None:
            resp = http(reg.addr, "GET", f"/v2/bench/blobs/{digest}", timeout=300)
            assert resp.status == 200 and resp.body == blob

        out[f"HTTP GET, {name}: first"] = get()
        out[f"HTTP GET, {name}: later (best of {rounds})"] = max(get() for _ in range(rounds))
        # The server's CPU time (user + system, all threads) per GB sent: a measure the
        # load of other processes hardly moves.
        out[f"HTTP GET, {name}: first, server CPU s/GB"] = round(cpu[0] / len(blob) * 1e9, 2)
        out[f"HTTP GET, {name}: later, server CPU s/GB (least)"] = round(min(cpu[1:]) / len(blob) * 1e9, 2)
        check()
        if checkout is not None:
            log = (work / f"{storage.name}.log").read_text(errors="replace")
            assert f"cas from {checkout}" in log, "the older checkout was not the one served"
    return out


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=128, help="blob size in MiB (default 128)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a checkout of an older version to compare with")
    args = ap.parse_args()
    blob = os.urandom(args.mib << 20)
    gw = RadosGateway()
    gw.start()
    try:
        gw.create_bucket(BUCKET)
        with tempfile.TemporaryDirectory(prefix="bench-s3-serving-") as tmp:
            work = Path(tmp)
            results = asyncio.run(_store(gw, work, blob, args.rounds))
            if args.before is not None:
                results |= _http(gw, work, blob, args.rounds, "before, no piece cache", args.before, 0)
                results |= _http(gw, work, blob, args.rounds, "before, piece cache", args.before, None)
            results |= _http(gw, work, blob, args.rounds, "no piece cache", None, 0)
            results |= _http(gw, work, blob, args.rounds, "piece cache", None, None)
    finally:
        gw.stop()
    width = max(len(k) for k in results)
    print(f"{'blob of ' + str(args.mib) + ' MiB':<{width}}  MB/s (CPU: s/GB)")
    for k, v in results.items():
        print(f"{k:<{width}}  {v:>7}")


if __name__ == "__main__":
    main()
