"""Two ``pybuild serve`` processes on one storage directory (SQLite metadata) and one upload
session: requests of the session sent to both at once take turns, as they do within one
process, so the one that comes second is told where the session stands (416) instead of
appending at the same offset (both 202, then a commit that fails, 500)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
from pathlib import Path

from testkit.registries import http, pybuild_configured_registry


def _patch_head(addr: str, location: str, start: int, size: int) -> bytes:
    return (f"PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: {start}-{start + size - 1}\r\nContent-Length: {size}\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n").encode()


def test_one_session_written_through_two_processes_takes_turns(tmp_path: Path) -> None:
    storage = tmp_path / "shared"
    with pybuild_configured_registry(tmp_path / "a", {}, storage=storage) as a, \
            pybuild_configured_registry(tmp_path / "b", {}, storage=storage) as b:
        post = http(a.addr, "POST", "/v2/team/app/blobs/uploads/")
        assert post.status == 202, post.body
        location = post.headers["location"]
        first, second = os.urandom(1 << 20), os.urandom(1 << 20)
        host, port = a.addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            # Process A holds the session: its 100 Continue comes once the handler reads
            # the body, under the session's lock; half the body is sent, then B is asked.
            slow.sendall(_patch_head(a.addr, location, 0, len(first)))
            assert slow.recv(64).startswith(b"HTTP/1.1 100"), "no 100 Continue"
            slow.sendall(first[: len(first) // 2])
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                other = pool.submit(http, b.addr, "PATCH", location, body=second,
                                    headers={"Content-Type": "application/octet-stream",
                                             "Content-Range": f"0-{len(second) - 1}"}, timeout=60)
                # B must wait for A's request to end; it may not answer meanwhile.
                done, _ = concurrent.futures.wait([other], timeout=2)
                assert not done, f"B answered while A held the session: {other.result().status}"
                slow.sendall(first[len(first) // 2:])
                answer = b""
                while chunk := slow.recv(65536):
                    answer += chunk
                assert b"HTTP/1.1 202" in answer, answer[:300]
                late = other.result()
        assert late.status == 416, late.body
        assert late.headers["range"] == f"0-{len(first) - 1}"
        digest = "sha256:" + hashlib.sha256(first).hexdigest()
        sep = "&" if "?" in location else "?"
        put = http(b.addr, "PUT", f"{location}{sep}digest={digest}")
        assert put.status == 201, put.body
        assert http(a.addr, "GET", f"/v2/team/app/blobs/{digest}").body == first
