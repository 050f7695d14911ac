"""``--load`` / ``-o type=docker``: the image into the local Docker engine, through its API.

No docker CLI is needed: the docker-archive is streamed as the body of ``POST /images/load``
(Docker Engine API) to the engine at ``$DOCKER_HOST`` (``unix://PATH`` or plain
``tcp://HOST:PORT``), by default ``unix:///var/run/docker.sock``. The engine answers with one
JSON message per line (``{"stream": "Loaded image: x:1\\n"}`` or ``{"error": ...}``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

from .output_errors import ExportError

__all__ = ["DEFAULT_HOST", "EngineError", "engine_address", "load_image", "ping"]

DEFAULT_HOST = "unix:///var/run/docker.sock"


class EngineError(ExportError):
    """The Docker engine could not be reached, or refused the image."""


def engine_address() -> tuple[str, str, str]:
    """``(DOCKER_HOST as shown, "unix" | "tcp", socket path | http base URL)``."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if not path:
            raise EngineError(f"DOCKER_HOST={host} names no socket: write unix:///PATH")
        return host, "unix", path
    if host.startswith("tcp://"):
        if os.environ.get("DOCKER_TLS_VERIFY"):
            raise EngineError(f"DOCKER_HOST={host} with DOCKER_TLS_VERIFY: pybuild loads into "
                              "engines over a unix socket or plain tcp:// only; use "
                              "-o type=docker,dest=FILE and docker load")
        return host, "tcp", "http://" + host[len("tcp://"):].rstrip("/")
    raise EngineError(f"DOCKER_HOST={host}: pybuild reaches engines at unix:///PATH or "
                      "tcp://HOST:PORT only; use -o type=docker,dest=FILE and docker load")


async def _request(method: str, path: str, archive: AsyncIterator[bytes] | None = None,
                   *, read_timeout: float | None = None) -> tuple[int, bytes]:
    # The HTTP client only when loading: a build without --load must start fast.
    import aiohttp

    shown, kind, target = engine_address()
    connector: aiohttp.BaseConnector
    if kind == "unix":
        connector, base = aiohttp.UnixConnector(path=target), "http://docker"
    else:
        connector, base = aiohttp.TCPConnector(), target
    # Loading a large image takes as long as it takes; connecting does not.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
    headers = {"Content-Type": "application/x-tar"} if archive is not None else {}
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                session.request(method, base + path, data=archive, headers=headers) as resp:
            return resp.status, await resp.read()
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or str(exc.os_error)
        raise EngineError(f"cannot reach the Docker engine at {shown} ({reason}): start it, "
                          "or set DOCKER_HOST to its address") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EngineError(f"the Docker engine at {shown} did not answer {method} {path}: "
                          f"{exc or type(exc).__name__}") from exc
    finally:
        if archive is not None:
            await archive.aclose()  # type: ignore[attr-defined]


async def ping() -> None:
    """Check that the engine answers (``GET /_ping``) before a build that loads into it."""
    status, body = await _request("GET", "/_ping", read_timeout=30)
    if status != 200:
        raise EngineError(f"the Docker engine at {engine_address()[0]} answered /_ping with "
                          f"HTTP {status}: {body[:200].decode(errors='replace')}")


async def load_image(archive: AsyncIterator[bytes]) -> list[str]:
    """Stream the docker-archive ``archive`` into the engine; its "Loaded image" lines."""
    shown = engine_address()[0]
    status, body = await _request("POST", "/images/load?quiet=1", archive)
    messages = []
    for line in body.decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            msg = {"message": line}
        if isinstance(msg, dict):
            messages.append(msg)
    if status != 200:
        text = "; ".join(str(m.get("message", "")) for m in messages) or f"HTTP {status}"
        raise EngineError(f"the Docker engine at {shown} refused the image: {text}")
    errors = [str(m.get("error") or m.get("errorDetail")) for m in messages
              if m.get("error") or m.get("errorDetail")]
    if errors:
        raise EngineError(f"the Docker engine at {shown} did not load the image: "
                          + "; ".join(errors))
    return [str(m["stream"]).strip() for m in messages if m.get("stream")]
