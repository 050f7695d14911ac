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

from registry.client.proxies import Proxies, ProxyError, aiohttp_proxy

from ..dockerfile.instructions import Add
from ..git_fetch import Fetched, GitFetchError, as_committed, fetch
from .common import BuildError, StepEnv

__all__ = [
    "check_checksum_sources",
    "download",
    "download_name",
    "fetch_git",
    "sha256_file",
]


def check_checksum_sources(ins: Add, where: str) -> None:
    """``ADD --checksum`` verifies one download, as BuildKit requires (it is not silently
    ignored for a local file)."""
    if len(ins.sources) + len(ins.files) != 1:
        raise BuildError(where, "--checksum can't be used with several sources: give each "
                         "URL an ADD --checksum of its own")
    if not ins.sources or not ins.sources[0].startswith(("http://", "https://")):
        raise BuildError(where, "--checksum needs an http(s) URL source; a file of the build "
                         "context is not checked: remove --checksum or ADD the file's URL")


async def fetch_git(env: StepEnv, url: str, keep_git_dir: bool, where: str) -> Fetched:
    """``ADD <git URL> <dir>``: the repository's commit (:mod:`builder.git_fetch`) checked
    out into the build's scratch space, without ``.git`` unless ``--keep-git-dir``. As
    Git records only whether a file is executable, files are 0644 or 0755 and directories
    0755 whatever the umask, and every entry has the commit's time (what BuildKit gives
    with ``SOURCE_DATE_EPOCH``; without it, the checkout's time): with the epoch, the same
    commit makes the same layer (but for a kept ``.git``, whose files record when they
    were fetched)."""
    try:
        fetched = await asyncio.to_thread(fetch, url, env.scratch("git-"),
                                          keep_git_dir=keep_git_dir)
    except GitFetchError as exc:
        raise BuildError(where, f"{exc}; ADD of a Git repository fetches it with git, as "
                         "BuildKit does (git@ and ssh:// URLs need the host's SSH keys)") from None
    await asyncio.to_thread(as_committed, fetched.path, fetched.time)
    return fetched


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


# Seconds a download may go without a byte before it fails (there is no limit on the
# whole: a big file on a slow link takes what it takes, as with BuildKit).
READ_TIMEOUT = 120.0


async def download(env: StepEnv, url: str, where: str) -> Path:
    """Fetch ``url`` as BuildKit's ADD does, through the proxies the environment names
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``: the daemon's environment, for
    BuildKit; read as the registry client reads them, :mod:`registry.client.proxies`),
    shown as a step of its own with its bytes."""
    import aiohttp

    name = download_name(url)
    path = env.scratch("add-") / name
    mtime = 0.0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=READ_TIMEOUT)
    n = env.progress.start(url)
    done = 0
    try:
        via = aiohttp_proxy(Proxies(), url)  # as the registry client's
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url, **via) as resp:
            if resp.status != 200:
                raise BuildError(where, f"downloading {url}: HTTP {resp.status}")
            mtime = _last_modified(resp.headers.get("Last-Modified"))
            total = resp.content_length or 0
            f = await asyncio.to_thread(open, path, "wb")
            try:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(f.write, chunk)
                    done += len(chunk)
                    env.progress.transfer(n, url, name, done, max(total, done))
            finally:
                await asyncio.to_thread(f.close)
    except TimeoutError:
        message = (f"downloading {url}: no byte came for {READ_TIMEOUT:.0f} s (after "
                   f"{done} bytes); check the server, or a proxy the environment names")
        env.progress.error(n, message)
        raise BuildError(where, message) from None
    except aiohttp.ClientError as exc:
        env.progress.error(n, f"downloading {url}: {exc}")
        raise BuildError(where, f"downloading {url}: {exc}") from exc
    except BuildError as exc:
        env.progress.error(n, str(exc).splitlines()[0])
        raise
    except ProxyError as exc:
        env.progress.error(n, str(exc))
        raise BuildError(where, f"downloading {url}: {exc}") from None
    env.progress.transfer(n, url, name, done, done, "downloaded")
    env.progress.done(n)
    os.chmod(path, 0o600)
    os.utime(path, (mtime, mtime))
    return path
