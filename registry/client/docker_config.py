"""Docker's ``config.json``, read and written as the Docker CLI does.

- Where: ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``.
- An empty file (or one of only whitespace) is an empty configuration, as Docker reads it
  (``touch ~/.docker/config.json`` is common in CI scripts); anything else that is not a
  JSON object is an error naming the file.
- ``auths`` keys: Docker matches a key to a registry by its host (``ConvertToHostname`` in
  docker/cli: ``http://`` or ``https://`` dropped, then everything from the first ``/``),
  so ``https://reg:5000/``, ``http://reg:5000/v2/`` and ``reg:5000`` all name ``reg:5000``.
  :func:`server_host` is that rule; ``pybuild login``/``logout`` apply it to their argument
  too, as ``docker login https://reg:5000`` saves under ``reg:5000``.
- Writing replaces the file atomically (a temporary file in the same directory, mode 0600,
  renamed over it). A ``config.json`` that is a symbolic link (dotfile managers keep it
  so) stays one: the file it points to is replaced, as Docker does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cas.location import StorageLocationError, check_place

from .errors import ClientError

__all__ = ["ConfigError", "docker_config_path", "read_config", "server_host", "write_config"]


class ConfigError(ClientError):
    """config.json cannot be read or is not what Docker writes; the message names the file."""


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _check_place(path: Path) -> None:
    """ConfigError naming the variable when ``path`` is the default config.json and the
    variable it comes from (``DOCKER_CONFIG``, else ``HOME``) or a directory on the way is
    a file: "Not a directory" alone says neither which nor what to do."""
    if path != docker_config_path():
        return
    base = os.environ.get("DOCKER_CONFIG")
    top, var = (Path(base), "DOCKER_CONFIG") if base else (Path.home(), "HOME")
    fix = ("or set DOCKER_CONFIG to a directory for config.json" if var == "HOME"
           else "which is where Docker keeps config.json")
    try:
        check_place(path, top, var, "Docker's config file", fix)
    except StorageLocationError as exc:
        raise ConfigError(str(exc)) from None


def server_host(server: str) -> str:
    """The registry host a config.json key or a ``login`` argument names (Docker's
    ``ConvertToHostname``): ``https://reg:5000/v1/`` -> ``reg:5000``."""
    for scheme in ("http://", "https://"):
        if server.startswith(scheme):
            server = server[len(scheme):]
            break
    return server.partition("/")[0]


def read_config(path: Path) -> dict[str, Any]:
    """The parsed file ({} when it is missing or empty); :class:`ConfigError` when it is
    not a JSON object with object ``auths``/``credHelpers`` and a string ``credsStore``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if isinstance(exc, NotADirectoryError):
            _check_place(path)
        raise ConfigError(f"cannot read {path}: {exc}; fix or remove the file") from exc
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix or remove the file") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a JSON object; fix or remove the file")
    for section in ("auths", "credHelpers"):
        if not isinstance(doc.get(section) or {}, dict):
            raise ConfigError(f"{section} in {path} is not a JSON object; fix the file")
    if not isinstance(doc.get("credsStore") or "", str):
        raise ConfigError(f"credsStore in {path} is not a string; fix the file")
    return doc


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Replace ``path`` (or the file it links to) with ``config``, atomically, mode 0600."""
    import tempfile  # here: only login and logout write it, every pull reads it

    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):
        _check_place(path)
        raise
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent="\t")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
