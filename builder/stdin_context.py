"""``pybuild build -``: the build context, or the Dockerfile alone, read from standard
input, as ``docker build -`` reads it.

- A tar archive (plain, or compressed with gzip, bzip2, xz or zstd) is the context: it is
  unpacked into a temporary directory, removed when the build ends; its Dockerfile is
  ``Dockerfile`` at the top, or ``-f PATH`` inside it.
- Anything else is the Dockerfile itself, and the context is empty (a ``COPY`` finds
  nothing, as with Docker).

The archive is unpacked with ``tarfile``'s ``tar`` filter: no member lands outside the
directory (absolute names lose their ``/``; a name that climbs out with ``..`` or through a
symbolic link is refused), and no set-user-ID or set-group-ID bit is kept.
"""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Literal

import click
import zstandard

__all__ = ["StdinContext", "StdinContextError", "context_from_stdin", "read_stdin_context"]

_TAR_MAGIC_AT = 257
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_ZSTD = b"\x28\xb5\x2f\xfd"


class StdinContextError(ValueError):
    """Standard input holds neither a Dockerfile nor a readable context archive."""


class StdinContext:
    """A context read from standard input: ``path`` (a temporary directory, removed by
    :meth:`remove`) and, when the input was a Dockerfile, its ``dockerfile_text``."""

    def __init__(self, path: Path, dockerfile_text: str | None) -> None:
        self.path = path
        self.dockerfile_text = dockerfile_text

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


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


def read_stdin_context(stream: BinaryIO) -> StdinContext:
    """Read ``stream`` (standard input) as ``docker build -`` does (module docstring)."""
    head = _read_head(stream, 512)
    where = Path(tempfile.mkdtemp(prefix="pybuild-context-"))
    try:
        if head.startswith(_ZSTD):
            whole = io.BufferedReader(_Prefixed(head, stream))
            _unpack(zstandard.ZstdDecompressor().stream_reader(whole), "r|", where)
        elif head.startswith(_COMPRESSED) or head[_TAR_MAGIC_AT:_TAR_MAGIC_AT + 5] == b"ustar":
            _unpack(io.BufferedReader(_Prefixed(head, stream)), "r|*", where)
        else:
            text = head + stream.read()
            try:
                return StdinContext(where, text.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise StdinContextError(
                    "standard input is neither a Dockerfile (UTF-8 text) nor a tar archive of "
                    "the context (plain, gzip, bzip2, xz or zstd)") from exc
        return StdinContext(where, None)
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise


def _unpack(body: Any, mode: Literal["r|", "r|*"], where: Path) -> None:
    try:
        with tarfile.open(fileobj=body, mode=mode) as tar:
            tar.extractall(where, filter="tar")
    except tarfile.FilterError as exc:
        raise StdinContextError(f"the context archive on standard input is refused: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:  # writing the files failed (a full disk): said as such
            raise
        raise StdinContextError(f"the context archive on standard input cannot be read: {exc}") from exc
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise StdinContextError(f"the context archive on standard input cannot be read: {exc}") from exc


def context_from_stdin(dockerfile: Path | None) -> tuple[Path, Path | None, str | None]:
    """``pybuild build -`` (in the running click command): the context directory, the
    Dockerfile's path (``-f``, inside the archive) and the Dockerfile's text when standard
    input is one; the directory is removed when the command ends."""
    if dockerfile == Path("-"):
        raise click.UsageError("standard input cannot be both the context (-) and the "
                               "Dockerfile (-f -)")
    try:
        got = read_stdin_context(sys.stdin.buffer)
    except StdinContextError as exc:
        raise click.BadParameter(str(exc), param_hint="CONTEXT") from exc
    click.get_current_context().call_on_close(got.remove)
    if got.dockerfile_text is not None:
        if dockerfile is not None:
            got.remove()
            raise click.UsageError("-f names a Dockerfile inside a context archive, but "
                                   "standard input holds a Dockerfile, not an archive")
        return got.path, None, got.dockerfile_text
    return got.path, (got.path / dockerfile if dockerfile is not None else None), None
