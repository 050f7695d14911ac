"""``ADD https://...``: a download into the build's scratch space, and its sha256
(``--checksum``).

As BuildKit's Dockerfile front end: the file is named after the URL path's last element
(percent-decoded; ``__unnamed__`` when there is none), is mode 0600, and its mtime is
the response's ``Last-Modified`` (the epoch without one)."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import urllib.parse
from pathlib import Path

from ..dockerfile.instructions import Add
from ..remote_context import is_git_url
from .common import BuildError, StepEnv

__all__ = ["check_checksum_sources", "check_not_git", "download", "download_name",
           "sha256_file"]


def check_checksum_sources(ins: Add, where: str) -> None:
    """``ADD --checksum`` verifies one download, as BuildKit requires (it is not silently
    ignored for a local file)."""
    if len(ins.sources) + len(ins.files) != 1:
        raise BuildError(where, "--checksum can't be used with several sources: give each "
                         "URL an ADD --checksum of its own")
    if not ins.sources or not ins.sources[0].startswith(("http://", "https://")):
        raise BuildError(where, "--checksum needs an http(s) URL source; a file of the build "
                         "context is not checked: remove --checksum or ADD the file's URL")


def check_not_git(source: str, where: str) -> None:
    """BuildError for an ``ADD`` source BuildKit would clone as a Git repository
    (``git@host:repo``, ``git://``, ``ssh://``, an http(s) URL ending in ``.git``):
    pybuild does not clone, and downloading the URL or reading a context file by that
    name would add something else."""
    if is_git_url(source):
        raise BuildError(where, f"{source}: ADD of a Git repository is not supported by "
                         "pybuild; clone it in a RUN step (RUN git clone ...) or COPY a "
                         "checkout from the build context")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_name(url: str) -> str:
    """The name ``ADD <url> <dir>/`` gives the download (Go's ``path.Base``)."""
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path).rstrip("/")
    name = path.rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") else "__unnamed__"


def _last_modified(value: str | None) -> float:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() if value else 0.0
    except (TypeError, ValueError):
        return 0.0


async def download(env: StepEnv, url: str, where: str) -> Path:
    import aiohttp

    d = env.scratch("add-")
    path = d / download_name(url)
    mtime = 0.0
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            if resp.status != 200:
                raise BuildError(where, f"downloading {url}: HTTP {resp.status}")
            mtime = _last_modified(resp.headers.get("Last-Modified"))
            f = await asyncio.to_thread(open, path, "wb")
            try:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(f.write, chunk)
            finally:
                await asyncio.to_thread(f.close)
    except aiohttp.ClientError as exc:
        raise BuildError(where, f"downloading {url}: {exc}") from exc
    os.chmod(path, 0o600)
    os.utime(path, (mtime, mtime))
    return path
