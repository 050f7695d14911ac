"""``Expect: 100-continue``: a refused request is answered before the client sends its
body; an accepted one gets ``100 Continue`` when its body is wanted (RFC 9110 10.1.1).

curl sends the expectation for every body over 1 MiB (``curl -T layer.tar.gz -X PUT``).
Go's server (CNCF Distribution's) sends ``100 Continue`` only when the handler reads the
body; one sent before the checks had the client upload megabytes only to read a 401 or
404.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import bcrypt
from aiohttp.test_utils import TestClient

from cas import Digest
from testkit.tools import require_tool

from .helpers import push_blob

BIG = 3 << 20  # over curl's 1 MiB threshold for Expect: 100-continue


async def _expect(client: TestClient, method: str, target: str, body: bytes,
                  headers: dict[str, str] | None = None) -> tuple[list[int], bytes]:
    """Send the head of a request that expects 100-continue; send ``body`` only after a
    ``100 Continue``. Returns the statuses seen in order and the final answer's body.
    A final answer before ``100 Continue`` must close the connection (the body it did
    not ask for is never sent); one after it must not."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    lines = [f"{method} {target} HTTP/1.1", "Host: reg.local",
             "Expect: 100-continue", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in
               {"Content-Type": "application/octet-stream", **(headers or {})}.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    statuses = []
    try:
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            statuses.append(status)
            if status != 100:
                break
            writer.write(body)
            await writer.drain()
        fields = {k.strip().lower(): v.strip() for k, v in
                  (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)}
        length = int(fields.get(b"content-length", b"0"))
        payload = await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    if statuses[0] == 100:
        assert b"close" not in fields.get(b"connection", b"").lower()
    else:
        assert fields.get(b"connection", b"").lower() == b"close"
    return statuses, payload


async def _session(client: TestClient, repo: str) -> str:
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202
    return resp.headers["Location"]


async def test_refused_requests_are_answered_without_100_continue(client):
    body = os.urandom(BIG)
    digest = Digest.of(body)
    unknown = f"/v2/e/a/blobs/uploads/0123456789abcdef?digest={digest}"
    statuses, payload = await _expect(client, "PUT", unknown, body)
    assert statuses == [404]
    assert b"BLOB_UPLOAD_UNKNOWN" in payload
    statuses, payload = await _expect(client, "PUT", f"/v2/UPPER/blobs/uploads/x?digest={digest}", body)
    assert statuses == [400]
    assert b"NAME_INVALID" in payload
    location = await _session(client, "e/a")
    statuses, payload = await _expect(client, "PATCH", location, body, {"Content-Range": "5-10"})
    assert statuses == [416]
    statuses, payload = await _expect(
        client, "PUT", "/v2/e/a/manifests/t", os.urandom(5 << 20),
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert statuses == [413]
    assert b"MANIFEST_INVALID" in payload
    assert (await client.head(f"/v2/e/a/blobs/{digest}")).status == 404


async def test_a_request_without_credentials_is_refused_before_its_body(make_client, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    client = await make_client(auth_htpasswd=htpasswd)
    body = os.urandom(BIG)
    statuses, payload = await _expect(
        client, "POST", f"/v2/e/a/blobs/uploads/?digest={Digest.of(body)}", body)
    assert statuses == [401]
    assert b"UNAUTHORIZED" in payload


async def test_accepted_bodies_get_100_continue_then_are_stored(client):
    body = os.urandom(BIG)
    digest = Digest.of(body)
    location = await _session(client, "e/a")
    statuses, _ = await _expect(client, "PUT", f"{location}?digest={digest}", body)
    assert statuses == [100, 201]
    resp = await client.get(f"/v2/e/a/blobs/{digest}")
    assert await resp.read() == body

    location = await _session(client, "e/b")
    statuses, _ = await _expect(client, "PATCH", location, body, {"Content-Range": f"0-{BIG - 1}"})
    assert statuses == [100, 202]
    statuses, _ = await _expect(client, "POST", f"/v2/e/c/blobs/uploads/?digest={digest}", body)
    assert statuses == [100, 201]
    assert (await client.head(f"/v2/e/c/blobs/{digest}")).status == 200

    config = await push_blob(client, "e/c", b"{}")
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},'
        f'"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{digest}","size":{BIG}}}]}}'
    ).encode()
    statuses, _ = await _expect(client, "PUT", "/v2/e/c/manifests/t", manifest,
                                {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert statuses == [100, 201]


async def test_an_unknown_expectation_is_417(client):
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"PUT /v2/e/a/manifests/t HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n"
                 b"Content-Length: 2\r\nConnection: close\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 417 ")


async def test_curl_sends_no_body_to_a_refused_upload(client, tmp_path: Path):
    """``curl -T file -X PUT``, as people push a layer by hand: to a session that does not
    exist it uploads nothing; to one that does, the whole file."""
    curl = require_tool("curl")
    data = os.urandom(BIG)
    layer = tmp_path / "layer.bin"
    layer.write_bytes(data)
    digest = Digest.of(data)

    async def curl_put(url: str) -> tuple[str, int]:
        proc = await asyncio.create_subprocess_exec(
            curl, "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
            "-T", str(layer), "-X", "PUT", url, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        code, sent = out.decode().split()
        return code, int(sent)

    base = f"http://127.0.0.1:{client.port}"
    assert await curl_put(f"{base}/v2/c/a/blobs/uploads/0123456789abcdef?digest={digest}") == ("404", 0)
    location = await _session(client, "c/a")
    assert await curl_put(f"{base}{location}?digest={digest}") == ("201", BIG)
    assert await (await client.get(f"/v2/c/a/blobs/{digest}")).read() == data
