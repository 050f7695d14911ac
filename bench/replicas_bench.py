"""Three replicas behind one HAProxy: pybuild (metadata in PostgreSQL) vs CNCF Distribution
(a shared ``http.secret``), both on one shared storage directory.

Each cluster gets the same data and the same measurements as the ``registry`` area
(:func:`bench.registry_bench.bench_registry`, through the balancer's address): blob push
and pull, manifest GETs with ``wrk``, skopeo copy push/pull, storage after the ten-version
corpus. For pybuild the size of its PostgreSQL database is reported beside the storage
directory's growth (Distribution keeps its metadata in the storage).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.registry_bench import RegistryData, RegistrySettings, bench_registry
from bench.report import Measurement
from bench.targets import NotAvailable
from testkit.haproxy import load_balancer
from testkit.postgres import postgres_server
from testkit.registries import RegistryProcess, distribution_config

__all__ = ["REPLICAS", "bench_replicas"]

REPLICAS = 3


@contextmanager
def _distribution(work: Path) -> Iterator[tuple[str, Path, Callable[[], int]]]:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise NotAvailable("docker-registry is not installed; install docker-registry")
    storage = work / "storage"
    with ExitStack() as stack:
        addrs = []
        for n in range(REPLICAS):
            config = work / f"config{n}.yml"

            def argv(addr: str, config: Path = config) -> list[str]:
                text = distribution_config(storage, addr).replace(
                    "http:\n", "http:\n  secret: bench-shared-secret\n")
                config.write_text(text)
                return [binary, "serve", str(config)]

            replica = RegistryProcess("distribution", argv, storage=storage, log=work / f"r{n}.log")
            stack.enter_context(replica)
            addrs.append(replica.addr)
        lb = stack.enter_context(load_balancer(addrs))
        yield lb, storage, lambda: 0


@contextmanager
def _pybuild(work: Path) -> Iterator[tuple[str, Path, Callable[[], int]]]:
    storage = work / "storage"
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        url = server.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        migrated = subprocess.run([sys.executable, "-m", "builder", "storage", "migrate",
                                   "--database", url], capture_output=True, text=True, check=False)
        if migrated.returncode != 0:
            raise NotAvailable(f"pybuild storage migrate failed: {migrated.stderr}")
        config = work / "registry.yaml"
        config.write_text(json.dumps({"database": {"url": url}, "log": {"access": False}}))
        addrs = []
        for n in range(REPLICAS):
            def argv(addr: str) -> list[str]:
                return [sys.executable, "-m", "builder", "serve", "--addr", addr, "--storage",
                        str(storage), "--config", str(config)]

            replica = RegistryProcess("pybuild", argv, storage=storage, log=work / f"r{n}.log")
            stack.enter_context(replica)
            addrs.append(replica.addr)
        lb = stack.enter_context(load_balancer(addrs))

        def database_bytes() -> int:
            import psycopg

            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) if row else 0

        yield lb, storage, database_bytes


def bench_replicas(work: Path, data: RegistryData, settings: RegistrySettings,
                   skipped: dict[str, str]) -> list[Measurement]:
    """Measure both clusters; a cluster that cannot run is listed in ``skipped``."""
    out: list[Measurement] = []
    for name, cluster in (("distribution", _distribution), ("pybuild", _pybuild)):
        where = work / name
        where.mkdir(parents=True, exist_ok=True)
        try:
            with cluster(where) as (addr, storage, database_bytes):
                out += bench_registry(name, addr, data, settings, work, storage)
                size = database_bytes()
                if size:
                    out.append(Measurement("metadata database", "MB", False, {name: round(size / 1e6, 1)},
                                           "PostgreSQL's pg_database_size after the run"))
        except NotAvailable as exc:
            skipped[name] = str(exc)
        finally:
            shutil.rmtree(where, ignore_errors=True)
    return out
