"""The bucket's endpoint goes away under a running ``pybuild serve`` (packs in S3): a push
is answered 503 ``UNAVAILABLE`` with ``Retry-After``, as for an unreachable metadata
database (clients retry, load balancers fail over), not 500 "internal error"; the log
names the endpoint; once the endpoint is back the same push works. The pack backend's
listings report the endpoint as unreachable too, not with the S3 client's own error."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas.pack_s3 import S3Packs, S3Unreachable
from cas.s3_location import S3Location
from testkit.registries import RegistryProcess, _python_env, free_port, http, pybuild_argv

pytestmark = pytest.mark.slow


class _Forwarder:
    """A TCP port forwarded to ``upstream`` between :meth:`start` and :meth:`stop`;
    :meth:`stop` also cuts the connections made through it (a client's kept-alive ones)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.port = free_port()
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []

    def start(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept(), stops listening
            self._server.close()
            self._server = None
        for s in self._open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def forwarder(s3_location: S3Location) -> Iterator[_Forwarder]:
    fwd = _Forwarder(s3_location.endpoint)
    fwd.start()
    yield fwd
    fwd.stop()


def _post(addr: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = http(addr, "POST", f"/v2/team/app/blobs/uploads/?digest={digest}", body=data,
                headers={"Content-Type": "application/octet-stream"}, timeout=120)
    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.body


def test_listing_an_unreachable_endpoint_says_so(s3_location: S3Location,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import cas.pack_s3

    monkeypatch.setattr(cas.pack_s3, "RETRY", {"max_retries": 1})
    gone = S3Location(f"127.0.0.1:{free_port()}", s3_location.bucket, s3_location.prefix,
                      s3_location.access_key, s3_location.secret_key, secure=False)
    packs = S3Packs(gone, check=False)
    for call in (lambda: packs.size("aa11"), lambda: packs.delete("aa11"), packs.allocated):
        with pytest.raises(S3Unreachable, match=f"S3 endpoint http://{gone.endpoint} cannot be reached"):
            call()


def test_a_push_while_the_bucket_is_unreachable_is_503_and_works_again(
        s3_location: S3Location, forwarder: _Forwarder, tmp_path: Path) -> None:
    packs = S3Location(f"127.0.0.1:{forwarder.port}", s3_location.bucket, s3_location.prefix,
                       s3_location.access_key, s3_location.secret_key, secure=False)
    storage = tmp_path / "storage"
    log = tmp_path / "registry.log"
    process = RegistryProcess("pybuild", lambda addr: [*pybuild_argv(storage)(addr), "--packs",
                                                       packs.to_url(keys=True)],
                              storage=storage, log=log, env=_python_env(None))
    with process as reg:
        assert _post(reg.addr, os.urandom(2 << 20))[0] == 201
        forwarder.stop()
        data = os.urandom(2 << 20)
        status, headers, body = _post(reg.addr, data)
        assert status == 503, body
        assert int(headers["retry-after"]) > 0
        errors = json.loads(body)["errors"]
        assert [e["code"] for e in errors] == ["UNAVAILABLE"]
        assert "object storage is unreachable" in errors[0]["message"]
        assert s3_location.secret_key not in body.decode()
        assert f"S3 endpoint http://127.0.0.1:{forwarder.port} cannot be reached" in log.read_text()

        forwarder.start()
        assert _post(reg.addr, data)[0] == 201
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert http(reg.addr, "GET", f"/v2/team/app/blobs/{digest}").body == data
