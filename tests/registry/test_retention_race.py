"""Pushes racing retention, across processes: a ``pybuild serve`` collecting every 0.1 s
and ``pybuild storage retention`` run from another process, while two threads push images
the way clients do (blobs first, the manifest a moment later; an index's manifests by
digest, the index a moment later; a manifest by digest, then tagged). No push may fail,
every tag left pulls whole, and the store checks clean.

Without the protections this fails: with ``untagged_delay`` 0 an index's manifests go
before the index arrives; with ``upload_grace`` 0 a manifest's blobs are unlinked before
the manifest arrives (both are MANIFEST_BLOB_UNKNOWN)."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from testkit.registries import pybuild_configured_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
KEEP_LAST = 4


def request(addr: str, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(addr, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def desc(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data)}


class Pusher(threading.Thread):
    def __init__(self, addr: str, name: str, rounds: int, seed: int, min_seconds: float = 0) -> None:
        super().__init__(daemon=True)
        self.addr, self.name, self.rounds = addr, name, rounds
        self.min_seconds = min_seconds  # push on past ``rounds`` until this long has gone
        self.rng = random.Random(seed)
        self.failures: list[str] = []
        self.tagged: list[tuple[float, str]] = []  # (when the tag PUT returned, tag)

    def blob(self, data: bytes) -> None:
        status, _, body = request(self.addr, "POST", f"/v2/app/blobs/uploads/?digest={sha(data)}", data)
        if status != 201:
            self.failures.append(f"blob {sha(data)}: {status} {body[:200]!r}")

    def manifest(self, ref: str, doc: dict[str, Any]) -> bytes:
        data = json.dumps(doc).encode()
        status, _, body = request(self.addr, "PUT", f"/v2/app/manifests/{ref}", data,
                                  {"Content-Type": doc["mediaType"]})
        if status != 201:
            self.failures.append(f"manifest {ref}: {status} {body[:300]!r}")
        return data

    def image(self, label: str) -> dict[str, Any]:
        config = json.dumps({"architecture": "amd64", "os": "linux", "label": label}).encode()
        layers = [self.rng.randbytes(2048) for _ in range(2)]
        for data in (config, *layers):
            self.blob(data)
        return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": desc("application/vnd.oci.image.config.v1+json", config),
                "layers": [desc("application/vnd.oci.image.layer.v1.tar", d) for d in layers]}

    def pause(self) -> None:
        time.sleep(self.rng.uniform(0.05, 0.3))

    def run(self) -> None:
        try:
            start, i = time.monotonic(), -1
            while (i := i + 1) < self.rounds or time.monotonic() - start < self.min_seconds:
                if i % 3 == 2:  # a multi-platform push: manifests by digest, then the index
                    children = []
                    for arch in ("amd64", "arm64"):
                        doc = self.image(f"{self.name}-{i}-{arch}")
                        self.pause()
                        children.append(desc(OCI_MANIFEST, self.manifest(sha(json.dumps(doc).encode()), doc)))
                    self.pause()
                    tag = f"idx-{self.name}-{i}"
                    self.manifest(tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
                else:  # blobs, a moment later the manifest by digest, then its tag
                    doc = self.image(f"{self.name}-{i}")
                    self.pause()
                    self.manifest(sha(json.dumps(doc).encode()), doc)
                    self.pause()
                    tag = f"n{self.name}-{i}"
                    self.manifest(tag, doc)
                    self.manifest("latest", doc)
                self.tagged.append((time.time(), tag))
        except Exception as exc:  # a failure to report, not a dead thread
            self.failures.append(f"{type(exc).__name__}: {exc}")


def pulls_whole(addr: str, ref: str) -> list[str]:
    """Problems pulling ``app:ref`` and everything it references (empty: whole)."""
    status, _, body = request(addr, "GET", f"/v2/app/manifests/{ref}", headers={"Accept": ACCEPT})
    if status != 200:
        return [f"{ref}: manifest {status}"]
    doc = json.loads(body)
    if doc["mediaType"] == OCI_INDEX:
        return [p for child in doc["manifests"] for p in pulls_whole(addr, child["digest"])]
    problems = []
    for d in (doc["config"], *doc["layers"]):
        status, _, data = request(addr, "GET", f"/v2/app/blobs/{d['digest']}")
        if status != 200 or sha(data) != d["digest"]:
            problems.append(f"{ref}: blob {d['digest']}: {status}")
    return problems


def storage_cmd(storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "storage", *args, "--storage", str(storage)],
                          capture_output=True, text=True, timeout=300, check=False)


def test_pushes_racing_retention_in_two_processes_lose_nothing(tmp_path):
    policy = [{"repositories": "app", "keep": [
        {"tags": "latest"},
        {"tags": "re:^n.*", "last": KEEP_LAST},
        {"tags": "re:^idx-.*", "last": 2},
    ]}]
    settings = {"retention": {"interval": 0.1, "untagged_delay": "5s", "upload_grace": "10s",
                              "policies": policy}}
    config = tmp_path / "retention.yaml"
    config.write_text(json.dumps(settings))
    with pybuild_configured_registry(tmp_path / "reg", settings) as registry:
        # Longer than the upload grace (10 s), however fast the machine: the collection of
        # tags, manifests and links all happen while the pushes go on.
        pushers = [Pusher(registry.addr, name, rounds=12, seed=n, min_seconds=16)
                   for n, name in enumerate("ab")]
        for p in pushers:
            p.start()
        runs = 0
        while any(p.is_alive() for p in pushers) and runs < 12:  # the other process
            done = storage_cmd(registry.storage, "retention", "--config", str(config), "--json")
            assert done.returncode == 0, done.stderr
            runs += 1
        for p in pushers:
            p.join(timeout=300)
            assert not p.is_alive()
        assert [f for p in pushers for f in p.failures] == []
        # The collection really ran while they pushed: tags, manifests and links went.
        log = (tmp_path / "reg" / "registry.log").read_text()
        went = [tuple(map(int, m)) for m in re.findall(
            r"retention: deleted (\d+) tag\(s\) and (\d+) manifest\(s\), unlinked (\d+) blob", log)]
        assert went and all(sum(column) > 0 for column in zip(*went, strict=True))
        # Pushes have stopped: one more run from here takes what the policy does not keep.
        done = storage_cmd(registry.storage, "retention", "--config", str(config), "--json",
                           "--untagged-delay", "0", "--upload-grace", "0")
        assert done.returncode == 0, done.stderr
        status, _, body = request(registry.addr, "GET", "/v2/app/tags/list")
        assert status == 200
        tags = set(json.loads(body)["tags"])
        pushed = sorted(t for p in pushers for t in p.tagged)
        plain = [tag for _, tag in pushed if tag.startswith("n")]
        assert "latest" in tags
        assert len([t for t in tags if t.startswith("n")]) == KEEP_LAST
        assert {t for t in tags if t.startswith("n")} <= set(plain[-KEEP_LAST - 2:])
        assert len([t for t in tags if t.startswith("idx-")]) == 2
        for tag in sorted(tags):
            assert pulls_whole(registry.addr, tag) == []
        fsck = storage_cmd(registry.storage, "fsck")
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        # Only what the kept tags need stays linked: 4 + 1 images of 3 blobs and their
        # manifests, 2 indexes of 2 such images each, at most.
        linked = json.loads(storage_cmd(registry.storage, "stats", "--json").stdout)["links"]
        assert linked <= (KEEP_LAST + 1) * 4 + 2 * (1 + 2 * 4)
