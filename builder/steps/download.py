"""``ADD https://...``: a download into the build's scratch space, and its sha256
(``--checksum``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import urllib.parse
from pathlib import Path

from .common import BuildError, StepEnv

__all__ = ["download", "sha256_file"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def download(env: StepEnv, url: str, where: str) -> Path:
    import aiohttp

    d = env.scratch("add-")
    name = posixpath.basename(urllib.parse.urlparse(url).path) or "index.html"
    path = d / name
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            if resp.status != 200:
                raise BuildError(where, f"downloading {url}: HTTP {resp.status}")
            f = await asyncio.to_thread(open, path, "wb")
            try:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(f.write, chunk)
            finally:
                await asyncio.to_thread(f.close)
    except aiohttp.ClientError as exc:
        raise BuildError(where, f"downloading {url}: {exc}") from exc
    os.chmod(path, 0o600)
    return path
