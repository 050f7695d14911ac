"""A hostile client against a real ``pybuild serve``: requests built at random from
malformed parts (names, digests, references, Range headers, manifest and push-plan
bodies, upload chunks cut short or empty). Whatever comes, every answer is a 4xx (or a
2xx), none takes long, the log holds no traceback and no ERROR, and the server still
answers at the end. Two empty PATCHes in a row hung the whole server until this ran."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_serve_process import Server, serving

NAMES = ["a", "a/b", "../x", "a/../b", "A", "a//b", "a/" * 60 + "z", "%2e%2e/x", "a%00b", "ä",
         "a/_pybuild", "x" * 300, "_catalog", "a/blobs", "a/manifests", "fuzz/repo"]
ZERO = "sha256:" + "0" * 64
DIGESTS = [ZERO, "sha256:zz", "sha256:" + "a" * 63, "sha512:" + "0" * 128, "md5:abc", "",
           "sha256:" + "A" * 64, "sha256:../../etc", "blake3:" + "0" * 64]
REFS = ["latest", "v1", "", "-x", "a" * 200, ZERO, "..", "%2F"]
RANGES = ["bytes=0-0", "bytes=-0", "bytes=-1", "bytes=99999999999999-", "bytes=5-2",
          "bytes=0-1,2-3", "bytes=a-b", "bytes=0-" + "9" * 40, "items=0-1", "bytes= 0-1",
          "bytes=0-1," * 200]
MANIFESTS = [
    b"{", b"[]", b"null", b"[" * 50_000 + b"]" * 50_000, b'{"schemaVersion": 2}',
    json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:zz", "size": -1, "mediaType": "x"},
                "layers": []}).encode(),
    json.dumps({"schemaVersion": 2, "config": {"digest": ZERO, "size": 1e300, "mediaType": "x"},
                "layers": "nope"}).encode(),
    json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"digest": 5}]}).encode(),
    json.dumps({"schemaVersion": 2, "config": {"digest": ZERO, "size": 2, "mediaType": "x"},
                "layers": [{"digest": ZERO, "size": 2, "mediaType": "x",
                            "urls": ["file:///etc/passwd"]}]}).encode(),
    json.dumps({"schemaVersion": 2, "subject": {"digest": "../x"}, "config": {}, "layers": []}).encode(),
    b"\xff\xfe" + "{}".encode("utf-16-le"),
    json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": "x"}], "signatures": []}).encode(),
]
PLANS = [
    b"{",
    json.dumps({"digest": ZERO, "size": 10, "pieces": [{"length": 10, "key": "zz"}]}).encode(),
    json.dumps({"digest": ZERO, "size": 10, "pieces": [{"length": -5, "key": "0" * 64},
                                                      {"length": 15, "key": "0" * 64}]}).encode(),
    json.dumps({"digest": ZERO, "size": 2**70, "pieces": [{"length": 2**70, "key": "0" * 64}]}).encode(),
    json.dumps({"digest": ZERO, "size": 100_000, "pieces": [{"length": 1, "key": "0" * 64}] * 100_000}).encode(),
    json.dumps({"digest": ZERO, "size": 10, "pieces": [{"length": 10, "key": "0" * 64, "offset": 5}]}).encode(),
    json.dumps({"digest": ZERO, "size": 10, "pieces": [{"length": 10, "key": "0" * 64}],
                "bases": [{"digest": "sha256:zz"}, {"digest": ZERO, "repository": "../../x"}] * 50}).encode(),
    json.dumps({"digest": 7, "size": "10", "pieces": {}}).encode(),
    json.dumps({"digest": ZERO, "size": 0, "pieces": []}).encode(),
]


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path / "storage", request.param)


class Client:
    def __init__(self, server: Server) -> None:
        self.port = server.port
        self.bad: list[tuple[str, bytes]] = []

    def send(self, method: str, path: str, headers: list[str] | None = None, body: bytes = b"",
             what: str = "") -> bytes:
        head = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close", *(headers or [])]
        if not any(h.lower().startswith("transfer-encoding") for h in head):
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(data)
                answer = s.recv(1 << 16)
        except ConnectionResetError:  # refused before the body was read (too large): fine
            return b"HTTP/1.1 400 reset"
        except TimeoutError:
            answer = b"TIMEOUT"
        status = answer.split(b" ", 2)[1] if answer.count(b" ") >= 2 else b""
        if not status.isdigit() or int(status) >= 500:
            self.bad.append((what or f"{method} {path[:80]}", answer[:300]))
        return answer

    def location(self, answer: bytes) -> str | None:
        for line in answer.split(b"\r\n"):
            if line.lower().startswith(b"location:"):
                loc = line.split(b":", 1)[1].strip().decode()
                return "/" + loc.split("/", 3)[3] if loc.startswith("http") else loc
        return None


def test_a_hostile_client_gets_4xx_answers_and_the_server_lives(server: Server) -> None:
    rnd = random.Random(7)
    c = Client(server)
    for name in NAMES:
        for method, path in [("GET", f"/v2/{name}/tags/list?n=-1&last=%00"),
                             ("POST", f"/v2/{name}/blobs/uploads/?mount={ZERO}&from=../../x"),
                             ("POST", f"/v2/{name}/blobs/uploads/?digest=sha256:zz"),
                             ("GET", f"/v2/{name}/_pybuild/blob/recipe?digest=sha256:zz"),
                             ("GET", f"/v2/{name}/referrers/{ZERO}?artifactType=%ff")]:
            c.send(method, path)
        for digest in rnd.sample(DIGESTS, 4):
            c.send("GET", f"/v2/{name}/blobs/{digest}", [f"Range: {rnd.choice(RANGES)}"])
            c.send("DELETE", f"/v2/{name}/blobs/{digest}")
        for body in rnd.sample(MANIFESTS, 4):
            c.send("PUT", f"/v2/{name}/manifests/{rnd.choice(REFS)}",
                   ["Content-Type: application/vnd.oci.image.manifest.v1+json"], body, what=f"manifest {body[:30]!r}")
    for _ in range(12):  # upload sessions: chunks cut short, empty, out of range
        loc = c.location(c.send("POST", "/v2/fuzz/repo/blobs/uploads/"))
        assert loc is not None
        body = os.urandom(rnd.choice([0, 0, 1, 70_000]))
        ranges = rnd.choice([None, "0-0", f"0-{len(body) - 1}", "5-1", "x", f"{2**64}-{2**64 + 1}"])
        c.send("PATCH", loc, [f"Content-Range: {ranges}"] if ranges else [], body, what=f"PATCH {ranges}")
        c.send("PATCH", loc, [], b"", what="empty PATCH")
        c.send("PATCH", loc, ["Transfer-Encoding: chunked"], b"0\r\n\r\n", what="empty chunked PATCH")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # half a PATCH
            s.sendall(f"PATCH {loc} HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 100000\r\n\r\n".encode()
                      + os.urandom(100))
        digest = rnd.choice([*DIGESTS, "sha256:" + hashlib.sha256(body).hexdigest()])
        c.send("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={digest}", what=f"PUT {digest}")
        c.send("DELETE", loc)
    for plan in PLANS:
        c.send("POST", "/v2/fuzz/repo/_pybuild/blob/uploads/",
               ["Content-Type: application/vnd.pybuild.push-plan.v1+json"], plan, what=f"plan {plan[:40]!r}")
    plan = json.dumps({"digest": ZERO, "size": 10, "pieces": [{"length": 10, "key": "0" * 64}]}).encode()
    for header in ["Pybuild-Pieces: x", "Pybuild-Pieces: 5:zz", "Pybuild-Pieces: -1:" + "0" * 64,
                   "Pybuild-Pieces: 99999999999999999999:" + "0" * 64, ""]:
        loc = c.location(c.send("POST", "/v2/fuzz/repo/_pybuild/blob/uploads/",
                                ["Content-Type: application/vnd.pybuild.push-plan.v1+json"], plan))
        assert loc is not None
        c.send("PATCH", loc, [header] if header else [], rnd.choice([b"", os.urandom(10)]),
               what=f"pieces {header[:40]}")
    assert c.bad == []
    assert c.send("GET", "/v2/").startswith(b"HTTP/1.1 200")
    assert server.stop() == 0
    log = server.stderr.read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
