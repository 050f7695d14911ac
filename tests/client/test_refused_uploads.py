"""A push that a proxy in front of the registry refuses: the error says what the proxy
said (the title of its HTML page, not the page) and what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient
from registry.errors import RegistryError

from .helpers import Proxy, simple_image, store_image

# What nginx answers when a body is over its client_max_body_size (1 MiB by default).
NGINX_413 = ("<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
             "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
             "</body>\r\n</html>\r\n")


@pytest.mark.parametrize("body,content_type,said", [
    (NGINX_413, "text/html", "413 Request Entity Too Large"),
    ('{"errors": [{"code": "SIZE_INVALID", "message": "layer over the 100 KB quota"}]}',
     "application/json", "layer over the 100 KB quota"),
])
async def test_a_body_too_large_says_what_the_proxy_said_and_how_to_raise_the_limit(
    aiohttp_server: Any, pybuild_registry: str, tmp_path: Path, body: str, content_type: str,
    said: str,
) -> None:
    upstream = Proxy(f"http://{pybuild_registry}")

    async def front(request: web.Request) -> web.StreamResponse:
        if len(await request.read()) > 4096:  # the proxy's limit on a request body
            return web.Response(status=413, text=body, content_type=content_type)
        return await upstream.handle(request)

    async def close(_: web.Application) -> None:
        if upstream.session is not None:
            await upstream.session.close()

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", front)
    app.on_cleanup.append(close)
    server = await aiohttp_server(app)
    ref = f"127.0.0.1:{server.port}/big/image:1"
    async with await ImageStore.open(tmp_path / "local") as images, RegistryClient() as client:
        await store_image(images, ref, simple_image())
        with pytest.raises(RegistryError) as info:
            await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images,
                             client, Progress("quiet"), CopyOptions(jobs=1))
    message = str(info.value)
    assert "HTTP 413" in message and said in message
    assert "client_max_body_size" in message and "raise its limit" in message
    assert "<html" not in message and "\n" not in message


async def test_a_proxy_error_page_is_shown_by_its_title_on_one_line(
    aiohttp_server: Any, tmp_path: Path,
) -> None:
    async def front(request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/":
            return web.json_response({})
        if request.method == "HEAD":
            return web.Response(status=404)
        await request.read()
        return web.Response(status=502, content_type="text/html",
                            text=NGINX_413.replace("413 Request Entity Too Large", "502 Bad Gateway"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    server = await aiohttp_server(app)
    ref = f"127.0.0.1:{server.port}/behind/proxy:1"
    async with await ImageStore.open(tmp_path / "local") as images, \
            RegistryClient(ClientOptions(retries=1, backoff=0.01)) as client:
        await store_image(images, ref, simple_image())
        with pytest.raises(RegistryError) as info:
            await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images,
                             client, Progress("quiet"), CopyOptions(jobs=1))
    message = str(info.value)
    assert "HTTP 502" in message and "502 Bad Gateway" in message and "try again later" in message
    assert "<html" not in message and "\n" not in message and "client_max_body_size" not in message
