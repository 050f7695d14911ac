"""``python3 -m bench <area>``: measure pybuild against its peer, report a table and JSON.

Areas: ``registry`` (vs CNCF Distribution), ``replicas`` (three of each behind HAProxy),
``cas`` (vs the machine's own limits), ``builder`` (vs buildah and docker build), ``client``
(vs skopeo), ``ci`` (two CI runners sharing a build cache through a registry, vs docker
build and buildah). Every run first
measures the machine's limits. See bench/README.md for what each number means.

``proxy`` compares pull-through caches: pybuild's and Distribution's, mirroring one upstream.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click

# Run from a checkout: `testkit` and the packages import from its root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from bench.machine import measure_machine
from bench.report import RESULTS_DIR, Report
from bench.targets import NotAvailable, registry_targets

__all__ = ["main"]

MiB = 1 << 20


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks of pybuild against its peers, with the machine's limits measured alongside."""


def _common(f):  # type: ignore[no-untyped-def]
    f = click.option("--quick", is_flag=True,
                     help="Small sizes and short runs: checks the harness, not the speed.")(f)
    f = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                     help="Scratch directory (default: a new one under /var/tmp); "
                          "it should be on the disk the stores use.")(f)
    f = click.option("--results", type=click.Path(file_okay=False, path_type=Path),
                     default=RESULTS_DIR, show_default=True,
                     help="Where the JSON result goes.")(f)
    return f


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix="pybuild-bench-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _finish(report: Report, results: Path) -> None:
    click.echo(report.table())
    path = report.save(results)
    click.echo(f"results: {path}")
    if report.failed:
        raise SystemExit(1)


@main.command()
@_common
@click.option("--blob-mib", type=int, default=1024, show_default=True,
              help="Size of the blob pushed and pulled.")
@click.option("--clients", type=int, default=4, show_default=True,
              help="Concurrent pull clients (processes).")
@click.option("--wrk-seconds", type=int, default=10, show_default=True)
@click.option("--layers", type=int, default=10, show_default=True,
              help="Layers of the image skopeo copies.")
@click.option("--layer-mib", type=int, default=8, show_default=True)
@click.option("--target", "external", multiple=True, metavar="NAME=HOST:PORT",
              help="Also measure a registry that is already running (plain HTTP).")
@click.option("--no-pybuild", is_flag=True, help="Measure the peer only.")
def registry(quick: bool, workdir: Path | None, results: Path, blob_mib: int, clients: int,
             wrk_seconds: int, layers: int, layer_mib: int, external: tuple[str, ...],
             no_pybuild: bool) -> None:
    """Blob push/pull, manifest GETs and skopeo copy: pybuild vs CNCF Distribution."""
    from bench.registry_bench import (
        RegistryBenchError,
        RegistrySettings,
        bench_registry,
        prepare_data,
    )

    if quick:
        blob_mib, wrk_seconds, layer_mib, layers = min(blob_mib, 32), 1, 1, min(layers, 3)
    settings = RegistrySettings(blob_size=blob_mib * MiB, clients=clients,
                                wrk_seconds=wrk_seconds, layers=layers,
                                layer_size=layer_mib * MiB, pull_repeats=1 if quick else 3)
    if quick:
        settings = replace(settings, versions=3, version_layers=2, version_layer_size=MiB)
    report = Report(area="registry", peer="distribution",
                    parameters={"blob_mib": blob_mib, "clients": clients,
                                "wrk_seconds": wrk_seconds, "layers": layers,
                                "layer_mib": layer_mib, "quick": quick})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("generating data ...", err=True)
        data = prepare_data(work, settings)
        for target in registry_targets(list(external), pybuild=not no_pybuild):
            click.echo(f"measuring {target.name} ...", err=True)
            try:
                storage = None if target.kind == "external" else work / target.name / "storage"
                with target.running(work / target.name) as (addr, pid):
                    report.add(bench_registry(target.name, addr, data, settings, work, storage,
                                              pid=pid))
            except NotAvailable as exc:
                report.skipped[target.name] = str(exc)
            except RegistryBenchError as exc:
                report.failed[target.name] = str(exc)
    _finish(report, results)


@main.command()
@_common
@click.option("--versions", type=int, default=10, show_default=True,
              help="Image versions mirrored (each rewrites 2 % of the files).")
@click.option("--layers", type=int, default=4, show_default=True)
@click.option("--layer-mib", type=int, default=10, show_default=True)
@click.option("--repeats", type=int, default=9, show_default=True,
              help="Warm pulls per mirror and client; the median is reported.")
@click.option("--cold-rounds", type=int, default=3, show_default=True,
              help="Cold pulls per mirror and client, each through new, empty mirrors.")
def proxy(quick: bool, workdir: Path | None, results: Path, versions: int, layers: int,
          layer_mib: int, repeats: int, cold_rounds: int) -> None:
    """Cold and warm pulls, upstream bytes and storage: pybuild's mirror vs Distribution's."""
    from bench.proxy_bench import ProxyBenchError, ProxySettings, bench_proxy
    from bench.registry_bench import RegistrySettings

    if quick:
        versions, layers, layer_mib, repeats, cold_rounds = min(versions, 3), min(layers, 2), 1, 1, 1
    corpus = RegistrySettings(versions=versions, version_layers=layers,
                              version_layer_size=layer_mib * MiB)
    report = Report(area="proxy", peer="distribution",
                    parameters={"versions": versions, "layers": layers, "layer_mib": layer_mib,
                                "repeats": repeats, "cold_rounds": cold_rounds, "quick": quick})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("mirroring ...", err=True)
        try:
            report.add(bench_proxy(work, ProxySettings(corpus, repeats, cold_rounds),
                                   report_skip=report.skipped.__setitem__))
        except ProxyBenchError as exc:
            report.failed["proxy"] = str(exc)
    _finish(report, results)


@main.command()
@_common
@click.option("--blob-mib", type=int, default=1024, show_default=True,
              help="Size of the blob ingested and read.")
def cas(quick: bool, workdir: Path | None, results: Path, blob_mib: int) -> None:
    """Ingest, read and re-ingest through cas.Store, against the machine's own limits."""
    from bench.store_bench import bench_cas

    if quick:
        blob_mib = min(blob_mib, 32)
    report = Report(area="cas", peer="machine", parameters={"blob_mib": blob_mib, "quick": quick})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("measuring pybuild's store ...", err=True)
        try:
            report.add(bench_cas(work, report.machine, size=blob_mib * MiB))
        except ImportError as exc:
            report.skipped["pybuild"] = f"cas.Store is not importable: {exc}"
    _finish(report, results)


@main.command()
@_common
@click.option("--files", type=int, default=16, show_default=True,
              help="Files in the build context.")
@click.option("--file-mib", type=int, default=4, show_default=True)
@click.option("--small-files", type=int, default=5000, show_default=True,
              help="Files in the multi-stage Dockerfile's context.")
def builder(quick: bool, workdir: Path | None, results: Path, files: int, file_mib: int,
            small_files: int) -> None:
    """The same Dockerfiles built by docker build (BuildKit), buildah and pybuild."""
    from bench.builder_bench import BuilderBenchError, bench_builder

    if quick:
        files, file_mib, small_files = min(files, 4), 1, min(small_files, 200)
    report = Report(area="builder", peer="docker",
                    parameters={"files": files, "file_mib": file_mib, "small_files": small_files,
                                "quick": quick})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("building ...", err=True)
        try:
            report.add(bench_builder(work, files=files, file_size=file_mib * MiB,
                                     small_files=small_files,
                                     report_skip=report.skipped.__setitem__))
        except BuilderBenchError as exc:
            report.failed["builder"] = str(exc)
    _finish(report, results)


@main.command()
@_common
@click.option("--layers", type=int, default=10, show_default=True)
@click.option("--layer-mib", type=int, default=50, show_default=True)
@click.option("--files", type=int, default=50, show_default=True,
              help="Files per layer; version 2 changes one of them in every layer.")
@click.option("--formats/--no-formats", default=True, show_default=True,
              help="Also a cold pull per layer format (gzip, multi-member gzip, zstd, zstd:chunked).")
@click.option("--shaped/--no-shaped", default=True, show_default=True,
              help="Also over a shaped link (a network namespace, 1 Gbit/s, +10 ms; needs root).")
@click.option("--shaped-only", is_flag=True,
              help="Only the shaped-link rows (needs root).")
def client(quick: bool, workdir: Path | None, results: Path, layers: int, layer_mib: int,
           files: int, formats: bool, shaped: bool, shaped_only: bool) -> None:
    """Pulling an image cold, then v2 over v1: pybuild's client vs skopeo and docker pull."""
    from bench.client_bench import ClientBenchError, bench_client

    if quick:
        layers, layer_mib = min(layers, 3), 1
    report = Report(area="client", peer="skopeo",
                    parameters={"layers": layers, "layer_mib": layer_mib, "files": files,
                                "quick": quick, "formats": formats, "shaped": shaped,
                                "shaped_only": shaped_only})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("pulling ...", err=True)
        try:
            report.add(bench_client(work, layers=layers, layer_size=layer_mib * MiB, files=files,
                                    report_skip=report.skipped.__setitem__, formats=formats,
                                    shaped=shaped, shaped_only=shaped_only,
                                    format_repeats=1 if quick else 2))
        except ClientBenchError as exc:
            report.failed["client"] = str(exc)
    _finish(report, results)


@main.command()
@_common
@click.option("--blob-mib", type=int, default=1024, show_default=True,
              help="Size of the blob pushed and pulled.")
@click.option("--wrk-seconds", type=int, default=10, show_default=True)
@click.option("--files", is_flag=True, help="Store on a shared directory instead of S3 (a RADOS Gateway).")
@click.option("--routing", type=click.Choice(["uri", "roundrobin"]), default="uri", show_default=True,
              help="HAProxy: blob GETs by a hash of their path (docs/deployment.md), or every "
                   "request round-robin.")
def replicas(quick: bool, workdir: Path | None, results: Path, blob_mib: int, wrk_seconds: int,
             files: bool, routing: str) -> None:
    """Three replicas behind HAProxy: pybuild (PostgreSQL metadata) vs CNCF Distribution."""
    from bench.registry_bench import RegistryBenchError, RegistrySettings, prepare_data
    from bench.replicas_bench import REPLICAS, bench_replicas

    if quick:
        blob_mib, wrk_seconds = min(blob_mib, 32), 1
    settings = RegistrySettings(blob_size=blob_mib * MiB, wrk_seconds=wrk_seconds,
                                pull_repeats=1 if quick else 3)
    if quick:
        settings = replace(settings, layers=3, layer_size=MiB, versions=3, version_layers=2,
                           version_layer_size=MiB)
    report = Report(area="replicas", peer="distribution",
                    parameters={"replicas": REPLICAS, "blob_mib": blob_mib,
                                "wrk_seconds": wrk_seconds, "quick": quick,
                                "storage": "files" if files else "s3", "routing": routing})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("generating data ...", err=True)
        data = prepare_data(work, settings)
        try:
            report.add(bench_replicas(work, data, settings, report.skipped, s3=not files,
                                      blob_affinity=routing == "uri"))
        except RegistryBenchError as exc:
            report.failed["replicas"] = str(exc)
    _finish(report, results)


@main.command()
@_common
@click.option("--deps-mib", type=int, default=64, show_default=True,
              help="Size of the dependency-install step's output.")
@click.option("--src-files", type=int, default=200, show_default=True,
              help="Source files (4 KiB each) in the build context.")
@click.option("--workload", type=click.Choice(["both", "single", "multistage"]), default="both",
              show_default=True,
              help="single: one stage (deps, COPY src, build); multistage: the build in its own "
                   "stage; both: one after the other, in one table.")
@click.option("--as-root", is_flag=True,
              help="Run pybuild as root (default: as a throw-away non-root user, as CI runners do).")
def ci(quick: bool, workdir: Path | None, results: Path, deps_mib: int, src_files: int,
       workload: str, as_root: bool) -> None:
    """Two CI runners sharing a build cache through a registry: pybuild vs docker and buildah."""
    from bench.ci_bench import CIBenchError, CISettings, bench_ci

    if quick:
        deps_mib, src_files = min(deps_mib, 4), min(src_files, 10)
    settings = CISettings(deps_mib=deps_mib, src_files=src_files, nonroot=not as_root,
                          workload=workload)
    report = Report(area="ci", peer="docker",
                    parameters={"deps_mib": deps_mib, "src_files": src_files,
                                "workload": workload, "as_root": as_root, "quick": quick})
    with _workdir(workdir) as work:
        click.echo("measuring the machine ...", err=True)
        report.machine = _machine(work, quick)
        click.echo("runner A, then runner B, for each builder ...", err=True)
        try:
            report.add(bench_ci(work, settings, report_skip=report.skipped.__setitem__))
        except CIBenchError as exc:
            report.failed["ci"] = str(exc)
    _finish(report, results)


def _machine(work: Path, quick: bool):  # type: ignore[no-untyped-def]
    return measure_machine(work, hash_mib=64 if quick else 256, disk_mib=64 if quick else 512)


if __name__ == "__main__":
    main()
