"""Three ``pybuild serve`` replicas behind HAProxy (round-robin per request), sharing one
PostgreSQL metadata database, with the packs in one shared storage directory, or in S3 (a
RADOS Gateway) with an empty storage directory per replica (upload sessions then live in
the database and the bucket alone; the CLI runs on a directory of its own too, finding
the packs through the database): Docker, skopeo and podman push and
pull through the balancer; a replica killed with SIGKILL in the middle of a push leaves the
client to finish through the others; ``storage gc`` looping beside the pushes loses nothing
they were told was stored. On S3 the replicas redirect blob GETs as Distribution's s3
driver does (``storage_redirect``): a blob stored as one whole object goes to a presigned
bucket URL, which Docker, skopeo and podman follow through the balancer; the balancer
routes blob GETs there by a hash of their path (docs/deployment.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cas.s3_location import S3Location
from testkit.clients import ContainerStorage, podman, run, skopeo
from testkit.docker_engine import DockerEngine, docker_client
from testkit.haproxy import load_balancer
from testkit.images import (
    Image,
    make_image,
    make_layer,
    read_oci_layout,
    tar_files,
    write_docker_archive,
    write_oci_layout,
)
from testkit.postgres import PostgresServer
from testkit.registries import RegistryProcess, get_manifest, http

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


class Cluster:
    def __init__(self, replicas: list[RegistryProcess], addr: str, storage: Path, database: str,
                 env: dict[str, str]):
        self.replicas, self.addr, self.storage, self.database = replicas, addr, storage, database
        self.env = env  # what the CLI needs besides its storage directory (S3 keys)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _cli(*args, "--storage", str(self.storage), "--database", self.database, env=self.env)

    def ref(self, repo: str, tag: str) -> str:
        return f"{self.addr}/{repo}:{tag}"

    def fsck(self) -> dict[str, object]:
        out = self.cli("storage", "fsck", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        report: dict[str, object] = json.loads(out.stdout)
        return report


@pytest.fixture(params=["files", "s3"])
def cluster(request: pytest.FixtureRequest, postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    database = postgres.create_database(f"replicas_{uuid.uuid4().hex[:12]}")
    assert _cli("storage", "migrate", "--database", database).returncode == 0
    storage = tmp_path / "storage"
    settings: dict[str, object] = {"database": {"url": database}, "log": {"access": False}}
    env: dict[str, str] = {}
    if request.param == "s3":
        s3: S3Location = request.getfixturevalue("s3_location")
        settings["packs"] = s3.to_url(keys=True)
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        settings["storage_redirect"] = True
    config = tmp_path / "registry.yaml"
    config.write_text(json.dumps(settings))
    replicas = []
    try:
        for n in range(3):
            own = storage if request.param == "files" else tmp_path / f"storage-r{n}"

            def argv(addr: str, own: Path = own) -> list[str]:
                return [sys.executable, "-m", "builder", "serve", "--addr", addr, "--storage",
                        str(own), "--config", str(config)]
            replicas.append(RegistryProcess("pybuild", argv, storage=own,
                                            log=tmp_path / f"r{n}.log"))
        # The three start at once, as a deployment's replicas do (each waits for its /v2/).
        with ThreadPoolExecutor(max_workers=len(replicas)) as pool:
            for started in [pool.submit(replica.start) for replica in replicas]:
                started.result()
        # On S3, blob GETs by path as docs/deployment.md recommends (uploads round-robin).
        with load_balancer([r.addr for r in replicas], blob_affinity=request.param == "s3") as addr:
            yield Cluster(replicas, addr, storage, database, env)
    finally:
        for replica in replicas:
            replica.stop()


def test_docker_skopeo_and_podman_through_the_balancer(
        cluster: Cluster, docker_engine: DockerEngine, loaded_busybox: str, busybox: Image,
        busybox_layout: Path, container_storage: ContainerStorage, tmp_path: Path) -> None:
    ref = cluster.ref("team/busybox", "v1")
    try:
        docker_engine.run("tag", loaded_busybox, ref)
        docker_engine.run("push", ref)
        docker_engine.run("rmi", "--force", ref)
        docker_engine.run("pull", ref)
        assert docker_engine.run_container(ref, "echo", "through three replicas") == "through three replicas\n"
    finally:
        docker_engine.run("rmi", "--force", ref, check=False)
    oci = cluster.ref("team/oci", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:latest", f"docker://{oci}"))
    for _ in range(3):  # every replica answers alike
        got = get_manifest(cluster.addr, "team/oci", "v1")
        assert got.status == 200 and got.headers["docker-content-digest"] == busybox.manifest_digest
    run(skopeo("copy", "--src-tls-verify=false", f"docker://{oci}", f"oci:{tmp_path / 'out'}:v1"))
    assert read_oci_layout(tmp_path / "out", "v1").manifest_digest == busybox.manifest_digest
    run(podman(container_storage, "pull", "--tls-verify=false", oci))
    assert cluster.fsck()["ok"] is True


def test_a_replica_killed_during_a_push_leaves_the_client_to_finish_through_another(
        cluster: Cluster, docker_engine: DockerEngine, busybox: Image, tmp_path: Path) -> None:
    big = [make_layer(tar_files({f"data{i}.bin": os.urandom(24 << 20)}), level=0) for i in range(3)]
    image = make_image([*busybox.layers, *big])
    archive = write_docker_archive(image, tmp_path / "big.tar", repo_tags=["pybuild-e2e/big:1"])
    docker_engine.run("load", "-i", str(archive))
    ref = cluster.ref("team/big", "v1")
    docker_engine.run("tag", "pybuild-e2e/big:1", ref)
    try:
        push = subprocess.Popen([docker_client("run"), "push", ref], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=docker_engine.env)
        time.sleep(1.0)  # uploads are under way through every replica
        victim = cluster.replicas[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        output, _ = push.communicate(timeout=600)
        assert push.returncode == 0, output
        for _ in range(3):
            got = get_manifest(cluster.addr, "team/big", "v1")
            assert got.status == 200
        docker_engine.run("rmi", "--force", ref, "pybuild-e2e/big:1")
        docker_engine.run("pull", ref)
        listing = docker_engine.run_container(ref, "ls", "/")
        assert "data2.bin" in listing
    finally:
        docker_engine.run("rmi", "--force", ref, "pybuild-e2e/big:1", check=False)
    assert cluster.fsck()["ok"] is True


def test_gc_looping_beside_pushes_loses_nothing(cluster: Cluster, busybox: Image, tmp_path: Path) -> None:
    stop = threading.Event()
    runs: list[subprocess.CompletedProcess[str]] = []

    def collect() -> None:
        while not stop.is_set():
            runs.append(cluster.cli("storage", "gc", "--grace", "0", "--json"))

    collector = threading.Thread(target=collect)
    collector.start()
    pushed = {}
    try:
        for n in range(6):
            layer = make_layer(tar_files({f"v{n}.txt": os.urandom(200_000)}))
            image = make_image([*busybox.layers, layer])
            layout = write_oci_layout(image, tmp_path / f"layout{n}")
            run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                       f"docker://{cluster.ref('team/gc', f'v{n}')}"))
            pushed[f"v{n}"] = image
    finally:
        stop.set()
        collector.join()
    assert len(runs) >= 2 and all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    for tag, image in pushed.items():
        out = tmp_path / f"pulled-{tag}"
        run(skopeo("copy", "--src-tls-verify=false", f"docker://{cluster.ref('team/gc', tag)}",
                   f"oci:{out}:{tag}"))
        assert read_oci_layout(out, tag).layer_digests == tuple(layer.digest for layer in image.layers)
    assert cluster.fsck()["ok"] is True


def _get_unfollowed(addr: str, path: str, headers: dict[str, str] | None = None
                    ) -> tuple[int, dict[str, str], bytes]:
    host, port = addr.rsplit(":", 1)
    conn = HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("cluster", ["s3"], indirect=True)
def test_redirected_blobs_reach_docker_skopeo_and_podman_through_the_balancer(
        cluster: Cluster, docker_engine: DockerEngine, busybox: Image,
        container_storage: ContainerStorage, tmp_path: Path) -> None:
    # Random bytes stored raw, each blob pushed in one request: one whole object each.
    data = make_layer(tar_files({"redirected.bin": os.urandom(6 << 20)}), level=0)
    image = make_image([*busybox.layers, data])
    for digest, blob in image.blobs().items():
        put = http(cluster.addr, "POST", f"/v2/team/redirect/blobs/uploads/?digest={digest}", body=blob)
        assert put.status == 201, put.body
    put = http(cluster.addr, "PUT", "/v2/team/redirect/manifests/v1", body=image.manifest,
               headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert put.status == 201, put.body
    path = f"/v2/team/redirect/blobs/{data.digest}"
    for _ in range(3):  # every replica redirects, to a short-lived presigned URL
        status, headers, _ = _get_unfollowed(cluster.addr, path)
        assert status == 307 and headers["docker-content-digest"] == data.digest
        location = headers["location"]
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=1200" in location
        url = urlsplit(location)
        assert http(url.netloc, "GET", f"{url.path}?{url.query}").body == data.blob
    # The bucket itself is not public: the same URL unsigned is refused.
    assert http(url.netloc, "GET", url.path).status == 403
    # A ranged GET is redirected too, as Distribution's; the bucket answers the Range the
    # client sends on with exactly those bytes.
    status, headers, _ = _get_unfollowed(cluster.addr, path, {"Range": "bytes=100-1099"})
    assert status == 307
    url = urlsplit(headers["location"])
    part = http(url.netloc, "GET", f"{url.path}?{url.query}", headers={"Range": "bytes=100-1099"})
    assert part.status == 206 and part.body == data.blob[100:1100]
    ref = cluster.ref("team/redirect", "v1")
    try:
        docker_engine.run("pull", ref)
        assert "redirected.bin" in docker_engine.run_container(ref, "ls", "/")
    finally:
        docker_engine.run("rmi", "--force", ref, check=False)
    run(skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'out'}:v1"))
    assert read_oci_layout(tmp_path / "out", "v1").layer_digests == tuple(x.digest for x in image.layers)
    run(podman(container_storage, "pull", "--tls-verify=false", ref))
    # Pushed as skopeo, podman and docker push a layer (POST, one PATCH with every byte, a
    # PUT without a body), the PATCH and the PUT on whichever replicas the balancer picks:
    # the blob is one object too (the gzip trailer ends its last piece with the PATCH), so
    # its GET is redirected.
    pushed = make_layer(tar_files({"pushed.bin": os.urandom(6 << 20)}), level=0)
    layout = write_oci_layout(make_image([*busybox.layers, pushed]), tmp_path / "src")
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
               f"docker://{cluster.ref('team/pushed', 'v1')}"))
    for _ in range(3):
        status, headers, _ = _get_unfollowed(cluster.addr, f"/v2/team/pushed/blobs/{pushed.digest}")
        assert status == 307 and headers["docker-content-digest"] == pushed.digest
        url = urlsplit(headers["location"])
        assert http(url.netloc, "GET", f"{url.path}?{url.query}").body == pushed.blob
