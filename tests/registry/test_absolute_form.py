"""Request targets in absolute form (``GET http://host/v2/ HTTP/1.1``).

RFC 9112 3.2.2: a server MUST accept them; Go's server (so CNCF Distribution) serves one
as the path it names. pybuild serves it as that origin form, under the host it names,
with every check an origin-form path gets: authentication is never skipped, and escapes
or dot segments are refused as they are in a path.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient

from cas import Digest

from .helpers import push_image


async def _raw(client: TestClient, method: str, target: str, *, host: str = "reg.local",
               headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request with ``target`` written as is; (status, headers, body)."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), parsed, payload


async def test_a_pull_in_absolute_form_gets_what_the_path_gets(client: TestClient) -> None:
    await push_image(client, "team/app", "v1", [b"layer one"])
    origin = await client.get("/v2/team/app/tags/list")
    assert origin.status == 200
    for target in ("http://reg.local/v2/team/app/tags/list",
                   "HTTP://127.0.0.1:5000/v2/team/app/tags/list",
                   "https://user:secret@mirror.example/v2/team/app/tags/list"):
        status, _, body = await _raw(client, "GET", target)
        assert (status, json.loads(body)) == (200, await origin.json()), target
    status, headers, body = await _raw(client, "GET", "http://reg.local/v2/team/app/manifests/v1",
                                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200
    assert headers["docker-content-digest"] == str(Digest.of(body))


async def test_a_push_in_absolute_form_is_stored(client: TestClient) -> None:
    data = b"pushed through an absolute-form target"
    digest = Digest.of(data)
    status, headers, _ = await _raw(client, "POST", "http://reg.local/v2/abs/blobs/uploads/")
    assert status == 202
    location = headers["location"]
    assert location.startswith("/v2/abs/blobs/uploads/")
    status, _, _ = await _raw(client, "PUT", f"http://reg.local{location}?digest={digest}", body=data)
    assert status == 201
    resp = await client.get(f"/v2/abs/blobs/{digest}")
    assert resp.status == 200 and await resp.read() == data


@pytest.mark.parametrize("target", [
    "http://reg.local/v2/../v2/_catalog",
    "http://reg.local/v2/%61bs/tags/list",
    "http://reg.local//v2/abs/tags/list",
])
async def test_what_a_path_may_not_hold_an_absolute_target_may_not_either(
        client: TestClient, target: str) -> None:
    status, _, body = await _raw(client, "GET", target)
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"


@pytest.mark.parametrize("target", ["*", "ftp://reg.local/v2/", "reg.local:5000"])
async def test_a_target_that_names_no_path_is_refused(client: TestClient, target: str) -> None:
    status, _, _ = await _raw(client, "GET", target)
    assert status == 400


async def test_authentication_sees_the_path_and_the_challenge_the_named_host(
        make_client, tmp_path) -> None:
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    client = await make_client(auth_htpasswd=htpasswd, auth_token_issue_key=tmp_path / "token.pem")
    status, headers, _ = await _raw(client, "GET", "http://mirror.example:5443/v2/_catalog",
                                    host="127.0.0.1")
    assert status == 401
    assert headers["www-authenticate"].startswith('Bearer realm="http://mirror.example:5443/token"')
    status, _, _ = await _raw(client, "GET", "http://mirror.example:5443/v2/_catalog",
                              headers={"Authorization": "Basic YWxpY2U6d3Jvbmc="})
    assert status == 401  # a wrong password through an absolute target is still wrong
