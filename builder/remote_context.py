"""``pybuild build -`` and ``pybuild build URL``: the build context, or the Dockerfile
alone, read from standard input or downloaded (http, https), as ``docker build`` reads
them.

- A tar archive (plain, or compressed with gzip, bzip2, xz or zstd) is the context: it is
  unpacked into a temporary directory, removed when the build ends; its Dockerfile is
  ``Dockerfile`` at the top, or ``-f PATH`` inside it.
- Anything else is the Dockerfile itself, and the context is empty (a ``COPY`` finds
  nothing, as with Docker).
- A git URL (``git://``, ``git@``, ``github.com/``, or an http(s) URL whose path ends in
  ``.git``), with an optional ``#REF:SUBDIR`` (a branch, tag or commit; a directory in it),
  is fetched with ``git`` (that one commit, its submodules too; :mod:`builder.git_fetch`,
  which ``ADD <git URL>`` shares) into a temporary directory, and ``SUBDIR`` (default:
  the top) is the context, without ``.git``, as BuildKit does.

The archive is unpacked with ``tarfile``'s ``tar`` filter: no member lands outside the
directory (absolute names lose their ``/``; a name that climbs out with ``..`` or through a
symbolic link is refused), and no set-user-ID or set-group-ID bit is kept.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, Literal

import click
import zstandard

from .git_fetch import GitFetchError, as_committed, fetch, is_git_url
from .steps.archives import COMPRESSED_MAGIC, is_tar_block

__all__ = ["ContextSourceError", "StreamContext", "context_from", "is_git_url", "read_context_stream"]

_ZSTD = COMPRESSED_MAGIC[3]


class ContextSourceError(ValueError):
    """Standard input holds neither a Dockerfile nor a readable context archive."""


class StreamContext:
    """A context from standard input or a URL: ``path``, in ``root`` (a temporary
    directory, removed by :meth:`remove`), and, when the input was a Dockerfile, its
    ``dockerfile_text``."""

    def __init__(self, root: Path, dockerfile_text: str | None, path: Path | None = None) -> None:
        self.root = root
        self.path = path or root
        self.dockerfile_text = dockerfile_text

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _Prefixed(io.RawIOBase):
    """``head`` and then the rest of ``stream``, as one readable stream."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _read_head(stream: BinaryIO, size: int) -> bytes:
    head = b""
    while len(head) < size:
        data = stream.read(size - len(head))
        if not data:
            break
        head += data
    return head


def read_context_stream(stream: BinaryIO, source: str = "standard input") -> StreamContext:
    """Read ``stream`` (``source``: standard input, or a URL) as ``docker build`` does
    (module docstring)."""
    head = _read_head(stream, 512)
    where = Path(tempfile.mkdtemp(prefix="pybuild-context-"))
    try:
        if head.startswith(_ZSTD):
            whole = io.BufferedReader(_Prefixed(head, stream))
            _unpack(zstandard.ZstdDecompressor().stream_reader(whole), "r|", where, source)
        elif head.startswith(COMPRESSED_MAGIC) or is_tar_block(head):
            _unpack(io.BufferedReader(_Prefixed(head, stream)), "r|*", where, source)
        else:
            text = head + stream.read()
            try:
                return StreamContext(where, text.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ContextSourceError(
                    f"{source} is neither a Dockerfile (UTF-8 text) nor a tar archive of the "
                    "context (plain, gzip, bzip2, xz or zstd)") from exc
        return StreamContext(where, None)
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise


def _unpack(body: Any, mode: Literal["r|", "r|*"], where: Path, source: str) -> None:
    try:
        with tarfile.open(fileobj=body, mode=mode) as tar:
            tar.extractall(where, filter="tar")
    except tarfile.FilterError as exc:
        raise ContextSourceError(f"the context archive from {source} is refused: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:  # writing the files failed (a full disk): said as such
            raise
        raise ContextSourceError(f"the context archive from {source} cannot be read: {exc}") from exc
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise ContextSourceError(f"the context archive from {source} cannot be read: {exc}") from exc


def _clone(url: str) -> StreamContext:
    """The context a git URL names (module docstring), in a temporary directory."""
    where = Path(tempfile.mkdtemp(prefix="pybuild-context-"))
    try:
        try:
            checkout = fetch(url, where)
        except GitFetchError as exc:
            raise click.BadParameter(str(exc), param_hint="CONTEXT") from exc
        as_committed(checkout.path, checkout.time)  # as ADD of a repository: any umask
        return StreamContext(where, None, checkout.path)
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise


def _download(url: str) -> BinaryIO:
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url}: a URL context is http:// or https://",
                                 param_hint="CONTEXT")
    try:
        return urllib.request.urlopen(url, timeout=60)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise click.BadParameter(f"cannot download {url}: the server answered {exc.code} "
                                 f"{exc.reason}", param_hint="CONTEXT") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.BadParameter(f"cannot download {url}: {reason}", param_hint="CONTEXT") from exc


def context_from(text: str, dockerfile: Path | None) -> tuple[Path, Path | None, str | None]:
    """``pybuild build -`` or ``pybuild build URL`` (in the running click command): the
    context directory, the Dockerfile's path (``-f``, inside the archive) and the
    Dockerfile's text when the input is one (or ``-f -`` with a URL); the directory is
    removed when the command ends."""
    if text == "-" and dockerfile == Path("-"):
        raise click.UsageError("standard input cannot be both the context (-) and the "
                               "Dockerfile (-f -)")
    source = "standard input" if text == "-" else text
    try:
        if is_git_url(text, context=True):
            got = _clone(text)
        else:
            stream = sys.stdin.buffer if text == "-" else _download(text)
            with contextlib.closing(stream):
                got = read_context_stream(stream, source)
    except ContextSourceError as exc:
        raise click.BadParameter(str(exc), param_hint="CONTEXT") from exc
    except OSError as exc:
        if exc.errno is not None or text == "-":
            raise
        raise click.BadParameter(f"cannot download {text}: {exc}", param_hint="CONTEXT") from exc
    click.get_current_context().call_on_close(got.remove)
    if dockerfile == Path("-"):  # a URL's context, the Dockerfile from stdin (buildx: -f -)
        if got.dockerfile_text is not None:
            got.remove()
            raise click.UsageError(f"-f - reads the Dockerfile from standard input, but {text} "
                                   "is a Dockerfile too, not a context archive")
        return got.path, None, sys.stdin.read()
    if got.dockerfile_text is not None:
        if dockerfile is not None:
            got.remove()
            raise click.UsageError(f"-f names a Dockerfile inside a context archive, but {source} "
                                   "holds a Dockerfile, not an archive")
        return got.path, None, got.dockerfile_text
    return got.path, (got.path / dockerfile if dockerfile is not None else None), None
