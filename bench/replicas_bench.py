"""Three replicas behind one HAProxy: pybuild (metadata in PostgreSQL) vs CNCF Distribution
(a shared ``http.secret``), both storing in one S3 bucket of a RADOS Gateway the run starts
(``--files``: both on one shared storage directory instead).

Each cluster gets the same data and the same measurements as the ``registry`` area
(:func:`bench.registry_bench.bench_registry`, through the balancer's address): blob push
and pull, manifest GETs with ``wrk``, skopeo copy push/pull, storage after the ten-version
corpus (the bucket's bytes under each registry's prefix, or the directory's growth). For
pybuild the size of its PostgreSQL database is reported beside it (Distribution keeps its
metadata in the storage). Distribution runs with its defaults otherwise.

On S3 both clusters are measured with the same semantics twice: first as Distribution's
s3 driver runs by default, blob GETs redirected to presigned bucket URLs (pybuild with
``storage_redirect: true``; it redirects a blob stored as one whole object and streams
the others), every measurement; then with redirects off on both (Distribution's
``storage.redirect.disable: true``, pybuild's default), the pull rows again, marked
"streamed": every byte through the replicas.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from bench.pull_rounds import PULL_ROWS, alternated_pulls, push_for_pulls
from bench.registry_bench import RegistryData, RegistrySettings, bench_registry
from bench.report import Measurement
from bench.targets import NotAvailable
from testkit.haproxy import load_balancer
from testkit.postgres import postgres_server
from testkit.registries import RegistryProcess, distribution_config

__all__ = ["REPLICAS", "bench_replicas"]

REPLICAS = 3


class Bucket:
    """A RADOS Gateway bucket the registries store in, each under its own prefix."""

    name = "bench"

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.creds = gateway.credentials
        gateway.create_bucket(self.name)

    def bytes_under(self, prefix: str) -> int:
        total = 0
        for page in self.gateway.client().get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix):
            total += sum(int(o["Size"]) for o in page.get("Contents", []))
        return total

    def empty(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (the gateway's OSD keeps them in memory)."""
        client = self.gateway.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.name, Delete={"Objects": keys, "Quiet": True})


def _distribution_s3(bucket: Bucket, root: str) -> str:
    c = bucket.creds
    return ("  s3:\n"
            f"    accesskey: {c.access_key}\n    secretkey: {c.secret_key}\n"
            f"    region: {c.region}\n    regionendpoint: {c.endpoint}\n"
            f"    bucket: {bucket.name}\n    rootdirectory: /{root}\n"
            "    secure: false\n    v4auth: true\n")


@contextmanager
def _distribution(work: Path, bucket: Bucket | None, redirect: bool = True,
                  blob_affinity: bool = False) -> Iterator[tuple[str, Path, Callable[[], int]]]:
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
                if bucket is not None:  # the s3 driver instead of the filesystem one
                    s3 = _distribution_s3(bucket, "distribution" if redirect else "distribution-streamed")
                    if not redirect:
                        s3 += "  redirect:\n    disable: true\n"
                    text = text.replace(f"  filesystem:\n    rootdirectory: {storage}\n", s3)
                config.write_text(text)
                return [binary, "serve", str(config)]

            # Its AWS SDK cannot use a custom CA bundle with its own HTTP transport: an
            # AWS_CA_BUNDLE in the environment stops it at start (and the gateway is HTTP).
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            replica = RegistryProcess("distribution", argv, storage=storage, log=work / f"r{n}.log",
                                      env=env)
            stack.enter_context(replica)
            addrs.append(replica.addr)
        lb = stack.enter_context(load_balancer(addrs, blob_affinity=blob_affinity))
        yield lb, storage, lambda: 0


@contextmanager
def _pybuild(work: Path, bucket: Bucket | None, redirect: bool = True,
             blob_affinity: bool = False) -> Iterator[tuple[str, Path, Callable[[], int]]]:
    storage = work / "storage"
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        url = server.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        migrated = subprocess.run([sys.executable, "-m", "builder", "storage", "migrate",
                                   "--database", url], capture_output=True, text=True, check=False)
        if migrated.returncode != 0:
            raise NotAvailable(f"pybuild storage migrate failed: {migrated.stderr}")
        config = work / "registry.yaml"
        settings: dict[str, object] = {"database": {"url": url}, "log": {"access": False}}
        if bucket is not None:
            c = bucket.creds
            settings["packs"] = (f"s3://{c.access_key}:{c.secret_key}@{c.endpoint.removeprefix('http://')}"
                                 f"/{bucket.name}/{'pybuild' if redirect else 'pybuild-streamed'}/"
                                 f"?secure=false&region={c.region}")
            settings["storage_redirect"] = redirect  # as Distribution's storage.redirect
        config.write_text(json.dumps(settings))
        def argv(addr: str) -> list[str]:
            return [sys.executable, "-m", "builder", "serve", "--addr", addr, "--storage",
                    str(storage), "--config", str(config)]

        replicas = [RegistryProcess("pybuild", argv, storage=storage, log=work / f"r{n}.log")
                    for n in range(REPLICAS)]
        for replica in replicas:
            stack.callback(replica.stop)
        # The replicas start at once (each waits for its /v2/), as a deployment's do.
        with ThreadPoolExecutor(max_workers=REPLICAS) as pool:
            for started in [pool.submit(replica.start) for replica in replicas]:
                started.result()
        addrs = [replica.addr for replica in replicas]
        lb = stack.enter_context(load_balancer(addrs, blob_affinity=blob_affinity))

        def database_bytes() -> int:
            import psycopg

            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) if row else 0

        yield lb, storage, database_bytes


def bench_replicas(work: Path, data: RegistryData, settings: RegistrySettings,
                   skipped: dict[str, str], *, s3: bool = True,
                   blob_affinity: bool = False) -> list[Measurement]:
    """Measure both clusters; a cluster that cannot run is listed in ``skipped``.
    ``blob_affinity``: HAProxy routes blob GETs by a hash of their path (both clusters)."""
    with ExitStack() as stack:
        bucket = None
        if s3:
            from testkit.ceph import RadosGateway

            gateway = RadosGateway(memstore_bytes=8 << 30)  # both clusters' objects at once
            gateway.start()
            stack.callback(gateway.stop)
            bucket = Bucket(gateway)
        return _bench(work, data, settings, skipped, bucket, blob_affinity)


def _bench(work: Path, data: RegistryData, settings: RegistrySettings, skipped: dict[str, str],
           bucket: Bucket | None, blob_affinity: bool) -> list[Measurement]:
    if bucket is None:
        return _bench_files(work, data, settings, skipped, blob_affinity)
    out: list[Measurement] = []
    streamed: list[Measurement] = []  # rows of their own, after the others
    for redirect in (True, False):
        variant = "" if redirect else "streamed"
        with ExitStack() as stack:
            addrs: dict[str, str] = {}
            sizes: dict[str, Callable[[], int]] = {}
            for name, cluster in CLUSTERS:
                where = work / f"{name}-{variant or 'redirect'}"
                where.mkdir(parents=True, exist_ok=True)
                stack.callback(shutil.rmtree, where, ignore_errors=True)
                try:
                    addrs[name], _, sizes[name] = stack.enter_context(
                        cluster(where, bucket, redirect, blob_affinity))
                except NotAvailable as exc:
                    skipped[name] = str(exc)
            for name, addr in addrs.items():
                if redirect:
                    rows = bench_registry(name, addr, data, settings, work,
                                          partial(bucket.bytes_under, f"{name}/"), "bucket bytes")
                    out += [m for m in rows if not m.name.startswith(PULL_ROWS)]
                    db_size = sizes[name]()
                    if db_size:
                        out.append(Measurement("metadata database", "MB", False,
                                               {name: round(db_size / 1e6, 1)},
                                               "PostgreSQL's pg_database_size after the run"))
                else:
                    push_for_pulls(name, addr, data, settings, work)
            rows = alternated_pulls(addrs, data, settings, work, variant)
            (out if redirect else streamed).extend(rows)
        for name in addrs:
            bucket.empty(f"{name}/" if redirect else f"{name}-streamed/")
    return out + streamed


def _bench_files(work: Path, data: RegistryData, settings: RegistrySettings,
                 skipped: dict[str, str], blob_affinity: bool) -> list[Measurement]:
    """On one shared directory: each cluster after the other, every row of the registry area."""
    out: list[Measurement] = []
    for name, cluster in CLUSTERS:
        where = work / name
        where.mkdir(parents=True, exist_ok=True)
        try:
            with cluster(where, None, True, blob_affinity) as (addr, storage, database_bytes):
                out += bench_registry(name, addr, data, settings, work, storage, "storage")
                db_size = database_bytes()
                if db_size:
                    out.append(Measurement("metadata database", "MB", False, {name: round(db_size / 1e6, 1)},
                                           "PostgreSQL's pg_database_size after the run"))
        except NotAvailable as exc:
            skipped[name] = str(exc)
        finally:
            shutil.rmtree(where, ignore_errors=True)
    return out


CLUSTERS = (("distribution", _distribution), ("pybuild", _pybuild))
