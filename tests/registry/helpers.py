"""Push helpers for the registry tests (they speak plain HTTP, like any client)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from cas import Digest
from registry import oci


async def push_blob(client: TestClient, repo: str, data: bytes, algorithm: str = "sha256") -> Digest:
    digest = Digest.of(data, algorithm)
    resp = await client.post(
        f"/v2/{repo}/blobs/uploads/?digest={digest}",
        data=io.BytesIO(data),
        headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == str(digest)
    return digest


def descriptor(media_type: str, data: bytes, digest: Digest | None = None) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": str(digest or Digest.of(data)),
        "size": len(data),
    }


async def push_image(
    client: TestClient,
    repo: str,
    tag: str,
    layers: list[bytes],
    *,
    extra: dict[str, Any] | None = None,
    media_type: str = oci.OCI_MANIFEST,
) -> tuple[Digest, bytes]:
    """Push config + layers + manifest; returns the manifest digest and bytes."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    await push_blob(client, repo, config)
    for layer in layers:
        await push_blob(client, repo, layer)
    config_type = oci.OCI_CONFIG if media_type == oci.OCI_MANIFEST else oci.DOCKER_CONFIG
    layer_type = oci.OCI_LAYER_GZIP if media_type == oci.OCI_MANIFEST else oci.DOCKER_LAYER
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
    }
    doc.update(extra or {})
    body = json.dumps(doc).encode()
    resp = await client.put(
        f"/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": media_type}
    )
    assert resp.status == 201, await resp.text()
    return Digest.of(body), body


async def push_docker_list(
    client: TestClient, repo: str, tag: str, platforms: list[str]
) -> tuple[Digest, dict[str, Digest]]:
    """A Docker manifest list of one schema 2 image per ``os/arch``; returns the list's
    digest and each platform's manifest digest."""
    entries, children = [], {}
    for plat in platforms:
        os_, arch = plat.split("/")
        digest, body = await push_image(client, repo, f"only-{arch}", [arch.encode()],
                                        media_type=oci.DOCKER_MANIFEST)
        children[plat] = digest
        entries.append({**descriptor(oci.DOCKER_MANIFEST, body),
                        "platform": {"architecture": arch, "os": os_}})
    body = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST_LIST,
                       "manifests": entries}).encode()
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=body,
                            headers={"Content-Type": oci.DOCKER_MANIFEST_LIST})
    assert resp.status == 201, await resp.text()
    return Digest.of(body), children


async def error_codes(resp: Any) -> list[str]:
    doc = await resp.json(content_type=None)
    return [e["code"] for e in doc["errors"]]


def stalled_get(port: int, path: str, stall: float, *, trickle: float = 0.0) -> tuple[int, bool]:
    """GET ``path``; read nothing for ``stall`` seconds, or (``trickle``) 4 KiB every
    ``trickle`` seconds for that long; then read what is there. Returns the bytes read and
    whether the server had closed the connection."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.settimeout(10)  # a server that stopped answering fails the test, not hangs it
    total = 0
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        end = time.monotonic() + stall
        while time.monotonic() < end:
            time.sleep(trickle or stall)
            if trickle:
                total += len(s.recv(4096))
        s.settimeout(2)
        while True:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                return total, False
            except ConnectionResetError:
                return total, True
            if not chunk:
                return total, True
            total += len(chunk)
    finally:
        s.close()


def start_serve(args: list[str], log: Path, *, wait: float = 30) -> tuple[subprocess.Popen[bytes], str]:
    """``pybuild serve ARGS`` in a process of its own, its stderr into ``log``; returns the
    process and the URL its "listening on" line announces, once it has (the caller
    terminates the process)."""
    root = Path(__file__).resolve().parents[2]
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "builder", "serve", *args], cwd=root,
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + wait
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        line = next(x for x in log.read_text().splitlines() if "listening on" in x)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc, line.split("listening on ", 1)[1]
