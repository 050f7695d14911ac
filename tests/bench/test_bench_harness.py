"""The benchmark harness: its parsers, its report and one quick run against the peer.

No timing is asserted anywhere: numbers depend on the machine. The tests check that the
harness measures what it says and writes what bench/README.md describes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.counting_relay import CountingRelay, Traffic
from bench.registry_bench import (
    RegistryBenchError,
    parse_wrk,
    parse_wrk_requests,
    process_cpu_seconds,
)
from bench.report import Measurement, Report
from bench.targets import registry_targets
from testkit.registries import pybuild_serve_available
from testkit.tools import require_tool

TESTFILES = Path(__file__).resolve().parent / "testfiles"
ROOT = Path(__file__).resolve().parents[2]


def test_parse_wrk_reads_rate_and_p99_in_ms() -> None:
    rate, p99 = parse_wrk((TESTFILES / "wrk-latency.txt").read_text())
    assert rate == 594.87
    assert p99 == 133.5


def test_parse_wrk_requests_reads_the_count() -> None:
    assert parse_wrk_requests((TESTFILES / "wrk-latency.txt").read_text()) == 2997
    with pytest.raises(RegistryBenchError, match="request count"):
        parse_wrk_requests("Requests/sec: 1.0\n")


def test_process_cpu_seconds_counts_a_busy_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\ninput()"],
                             stdin=subprocess.PIPE, text=True)
    try:
        deadline = 200
        while process_cpu_seconds(child.pid) < 0.25 and deadline:
            subprocess.run(["sleep", "0.05"], check=True)
            deadline -= 1
        assert 0.25 <= process_cpu_seconds(child.pid) < 5
    finally:
        child.communicate("\n", timeout=30)


def test_parse_wrk_rejects_error_responses() -> None:
    with pytest.raises(RegistryBenchError, match="19000 error responses"):
        parse_wrk((TESTFILES / "wrk-errors.txt").read_text())


def test_ratio_is_above_one_when_pybuild_is_better() -> None:
    rate = Measurement("GET", "MB/s", True, {"distribution": 100.0, "pybuild": 150.0})
    latency = Measurement("p99", "ms", False, {"distribution": 4.0, "pybuild": 2.0})
    missing = Measurement("push", "MB/s", True, {"distribution": 100.0})
    assert rate.ratio("pybuild", "distribution") == 1.5
    assert latency.ratio("pybuild", "distribution") == 2.0
    assert missing.ratio("pybuild", "distribution") is None

    report = Report(area="registry", peer="distribution")
    report.add([rate, missing])
    report.add([Measurement("push", "MB/s", True, {"pybuild": 50.0})])
    assert report.measurements[1].values == {"distribution": 100.0, "pybuild": 50.0}
    table = report.table().splitlines()
    assert table[0].split() == ["metric", "unit", "distribution", "pybuild", "pybuild/distribution"]
    assert table[2].split()[-1] == "1.50x"
    assert table[3].split()[-1] == "0.50x"


@pytest.mark.slow
def test_quick_registry_run_writes_json(tmp_path: Path) -> None:
    for tool in ("docker-registry", "wrk", "skopeo"):
        require_tool(tool)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "registry", "--quick", "--clients", "2",
         "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (result,) = (tmp_path / "results").glob("registry-*.json")
    data = json.loads(result.read_text())
    assert data["peer"] == "distribution"
    assert data["machine"]["sha256_mb_s"] > 0
    assert data["machine"]["page_cache_read_mb_s"] > 0
    names = [m["name"] for m in data["measurements"]]
    assert names[0] == "blob push 32 MiB (POST+PUT)"
    assert "manifest GET p99" in names
    assert len(names) == 12
    # The harness started both registries: their server CPU per request is measured.
    cpu = next(m for m in data["measurements"]
               if m["name"] == "manifest GET: server CPU per request")
    assert cpu["unit"] == "us" and cpu["higher_is_better"] is False
    assert "storage / bytes pushed" in names
    assert all(m["values"]["distribution"] > 0 for m in data["measurements"])
    # Distribution keeps every version's blobs whole: about what was pushed.
    ratio = next(m for m in data["measurements"] if m["name"] == "storage / bytes pushed")
    assert ratio["values"]["distribution"] > 0.9
    if pybuild_serve_available(ROOT):
        assert "pybuild" not in data["skipped"]
    else:
        assert "builder serve" in data["skipped"]["pybuild"]
    # The table names every metric too.
    for name in names:
        assert name in proc.stdout


def test_relay_counts_the_bytes_each_way() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            CountingRelay(f"127.0.0.1:{server.getsockname()[1]}") as relay:
        host, port = relay.addr.split(":")
        with socket.create_connection((host, int(port))) as client:
            upstream, _ = server.accept()
            with upstream:
                client.sendall(b"x" * 100_000)
                got = b""
                while len(got) < 100_000:
                    got += upstream.recv(65536)
                upstream.sendall(b"y" * 12_345)
                upstream.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
        assert answer == b"y" * 12_345
        assert relay.snapshot() == Traffic(from_registry=12_345, to_registry=100_000)
        relay.reset()
        assert relay.snapshot() == Traffic(0, 0)


def test_target_specs_are_checked() -> None:
    targets = registry_targets(["mine=127.0.0.1:5000"], pybuild=False)
    assert [(t.name, t.kind, t.addr) for t in targets] == [
        ("distribution", "distribution", ""),
        ("mine", "external", "127.0.0.1:5000"),
    ]
    with pytest.raises(ValueError, match="expected NAME=HOST:PORT"):
        registry_targets(["127.0.0.1:5000"])


PROXY_ROWS = [
    *(f"{client}: {what}" for client in ("skopeo copy", "pybuild pull") for what in (
        "cold pull (v1: 2 layers, 2.1 MB; median of 1)", "warm pull (cached; median of 1)",
        "mirror CPU, cold pull", "mirror CPU, warm pull", "upstream bytes, cold pull",
        "upstream blob GETs, cold pull", "upstream bytes, warm pull")),
    "storage after mirroring 3 versions (6 MB of blobs)", "storage / blob bytes",
    "upstream bytes, mirroring 3 versions",
]


@pytest.mark.slow
def test_quick_proxy_run_writes_json(tmp_path: Path) -> None:
    for tool in ("docker-registry", "skopeo"):
        require_tool(tool)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "proxy", "--quick",
         "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = (tmp_path / "results").glob("proxy-*.json")
    data = json.loads(result.read_text())
    assert (data["area"], data["peer"], data["failed"]) == ("proxy", "distribution", {})
    values = {m["name"]: m["values"] for m in data["measurements"]}
    assert list(values) == PROXY_ROWS
    for name, row in values.items():
        assert set(row) == {"distribution", "pybuild"}, name
        if name.endswith("upstream bytes, warm pull"):
            # Both mirrors serve a cached image without a body from upstream (only HEADs).
            assert row == {"distribution": 0, "pybuild": 0}
        elif "mirror CPU" in name:
            # Clock ticks of 10 ms: a quick pull may cost less than one.
            assert all(v >= 0 for v in row.values()), name
        else:
            assert all(v > 0 for v in row.values()), name
    # Two layers and a config: pybuild's mirror fetches each once (Distribution 2.8's
    # fetches every blob twice: one GET streams to the client, one stores).
    assert values["skopeo copy: upstream blob GETs, cold pull"]["pybuild"] == 3
    assert values["pybuild pull: upstream blob GETs, cold pull"]["pybuild"] == 3
    # Distribution keeps every version's blobs whole; pybuild keeps shared pieces once.
    assert values["storage / blob bytes"]["distribution"] > 0.9
    assert values["storage / blob bytes"]["pybuild"] < 0.8
    for name in values:
        assert name in proc.stdout

# The client area's layer formats and the v1 layer bytes each gives at --quick sizes.
CLIENT_FORMATS = [("chunked gzip (pybuild)", 3), ("plain gzip", 3),
                  ("multi-member gzip (eStargz-style)", 3), ("zstd", 3), ("zstd:chunked", 3)]

AREAS = {
    # area: (tools the peer side needs, the peer's column, metric names)
    "cas": ((), "machine", ["ingest 32 MiB (verify + store)", "read 32 MiB",
                            "re-ingest 32 MiB (all pieces known)"]),
    "client": (("docker-registry", "skopeo", "docker", "dockerd"), "skopeo",
               ["pull v1, cold (3 layers x 50 files, 3 MB compressed)", "pull v1, cold",
                "pull v2 over v1 (1 of 50 files changed per layer)",
                "pull v2 over v1: bytes served (v2 layers 3.2 MB)",
                "copy registry -> registry (an empty Distribution)",
                "copy OCI layout -> registry (an empty Distribution)",
                "push v2 over v1 (the registry holds v1)",
                "push v2 over v1: MB received (v2 layers 3.2 MB)",
                *[f"pull v1 cold, {f} ({mb} MB)" for f, mb in CLIENT_FORMATS],
                *[f"v2 over v1, {f}: stored anew / v2 layer bytes" for f, _ in CLIENT_FORMATS],
                *(["shaped link (1 Gbit/s, +10 ms per round trip): pull v1, cold",
                   "shaped link: pull v2 over v1",
                   "shaped link: push v2 over v1 (the registry holds v1)"]
                  if os.geteuid() == 0 else [])]),
    "replicas": (("docker-registry", "skopeo", "wrk", "haproxy", "radosgw"), "distribution",
                 ["blob push 32 MiB (POST+PUT)", "manifest GET", "manifest GET p99",
                  "skopeo copy push (3 x 1 MiB layers)", "skopeo copy push",
                  "bucket bytes after 3 versions x 2 chunked-frame layers, 6 MB pushed",
                  "storage / bytes pushed", "metadata database",
                  # The pull rows come from alternated rounds after the pushes.
                  "blob pull 32 MiB, 1 client", "blob pull 32 MiB, 4 clients",
                  "skopeo copy pull (3 x 1 MiB layers)", "skopeo copy pull",
                  "blob pull 32 MiB, 1 client, streamed", "blob pull 32 MiB, 4 clients, streamed",
                  "skopeo copy pull (3 x 1 MiB layers), streamed", "skopeo copy pull, streamed"]),
    "builder": (("docker-registry", "skopeo", "docker", "dockerd", "buildah"), "docker",
                ["build, cold (4 x 1 MiB context)", "build, no cache", "rebuild, cached",
                 "rebuild, one file changed",
                 "multi-stage, cold (200 small files, COPY --from of 2 files)",
                 "multi-stage, no cache", "multi-stage, rebuild, cached",
                 "multi-stage, rebuild, one file changed"]),
    "ci": (("docker-registry", "skopeo", "docker", "dockerd", "buildah"), "docker",
           ["runner A: build + push, cold (4 MiB dependencies, 10 source files)",
            "runner B: build + push, one source file changed",
            "runner B: MB from the registry", "runner B: MB to the registry",
            "runner A: build + push, cold (4 MiB dependencies, 10 source files, multi-stage)",
            "runner B: build + push, one source file changed (multi-stage)",
            "runner B: MB from the registry (multi-stage)",
            "runner B: MB to the registry (multi-stage)"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("area", sorted(AREAS))
def test_quick_run_of_each_area_writes_json(area: str, tmp_path: Path) -> None:
    tools, peer, names = AREAS[area]
    for tool in tools:
        require_tool(tool)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", area, "--quick",
         "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = (tmp_path / "results").glob(f"{area}-*.json")
    data = json.loads(result.read_text())
    assert data["area"] == area
    assert data["peer"] == peer
    assert data["failed"] == {}
    assert [m["name"] for m in data["measurements"]] == names
    for m in data["measurements"]:
        if m["name"] == "metadata database":  # pybuild's PostgreSQL; the peer has none
            assert m["values"]["pybuild"] > 0
            continue
        assert m["values"][peer] > 0
        if "pybuild" in m["values"]:
            assert m["values"]["pybuild"] > 0
            assert m["ratio"] is not None
    if area in ("builder", "ci"):
        assert all(m["values"]["buildah"] > 0 for m in data["measurements"])
    if area == "ci":
        # The peers' runner B fetched the base and the 4 MiB dependency layer; pybuild's
        # last RUN reads the base's busybox but not the dependencies, so its runner B
        # fetches only the files that step reads (a lazy layer through FUSE).
        pulled = data["measurements"][2]["values"]
        assert pulled["docker"] > 4.19 and pulled["buildah"] > 4.19, pulled
        if "pybuild" in pulled:  # without FUSE it fetches the layers whole, as the peers
            lazy = Path("/dev/fuse").exists()
            assert (0.5 < pulled["pybuild"] < 2.5) if lazy else pulled["pybuild"] > 4.19, pulled
        # As root the harness runs pybuild as a non-root user, as CI runners are.
        assert "pybuild" in pulled or "pybuild" in data["skipped"]
        # Multi-stage: the dependency layer is needed only to push it; pybuild leaves it
        # in the registry (a mount), the peers fetch it.
        pulled = data["measurements"][6]["values"]
        assert pulled["docker"] > 4.19 and pulled["buildah"] > 4.19, pulled
        if "pybuild" in pulled:
            assert pulled["pybuild"] < 2.5, pulled
    if area == "client":
        assert all(m["values"]["docker"] > 0 for m in data["measurements"]
                   if m["name"].startswith(("pull v1, cold", "pull v2", "shaped")))
        served = data["measurements"][3]["values"]
        # Whole-blob clients fetch every changed layer: at least the 3 layer blobs.
        assert served["skopeo"] >= 3.0
        assert served["docker"] >= 3.0
        if "pybuild+serve" in served:
            # Piece-level pulls fetch the changed pieces only.
            assert served["pybuild+serve"] < served["skopeo"] / 2
        pushed = next(m["values"] for m in data["measurements"]
                      if m["name"].startswith("push v2 over v1: MB received"))
        assert pushed["skopeo"] >= 3.0 and pushed["docker"] >= 3.0
        if "pybuild+serve" in pushed:
            # Piece-level pushes send the changed pieces only.
            assert pushed["pybuild+serve"] < pushed["skopeo"] / 2


def test_a_peer_build_that_fails_sealing_its_memfd_runs_once_more(tmp_path: Path) -> None:
    from bench.ci_bench import CIBenchError, _timed

    mark = tmp_path / "ran"
    flaky = ["sh", "-c", f"[ -e {mark} ] && exit 0; touch {mark}; "
             "echo 'Close_Fd sealing memfd copy: Device or resource busy' >&2; exit 1"]
    assert _timed(flaky) >= 0
    assert mark.exists()
    # Any other failure is reported at once, and a second transient one too.
    with pytest.raises(CIBenchError, match="exited 1"):
        _timed(["sh", "-c", "echo broken >&2; exit 1"])
    always = ["sh", "-c", "echo 'sealing memfd copy: Device or resource busy' >&2; exit 1"]
    with pytest.raises(CIBenchError, match="sealing memfd"):
        _timed(always)
