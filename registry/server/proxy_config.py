"""The ``proxy`` settings of ``pybuild serve``: which upstream registries it mirrors.

Two forms, which may be combined::

    proxy:                               # CNCF Distribution's keys: one upstream,
      remoteurl: https://registry-1.docker.io   # the one Docker's registry-mirrors uses
      username: alice                    # optional, for the upstream
      password: secret
      ttl: 5m                            # how long a tag is served without asking again
      mixed: false                       # true: pushes are accepted as well

    proxy:
      upstreams:                         # several upstreams, chosen by host
        - host: ghcr.io                  # what ?ns=ghcr.io (containerd) names
          remoteurl: https://ghcr.io
          ttl: 1h                        # username, password, ttl: per upstream
        - host: quay.io
          remoteurl: https://quay.io

A request is served from the upstream named by its ``ns`` query parameter (containerd's
mirrors send ``?ns=<host>``), else from the upstream whose ``host`` is the repository
name's first component (``GET /v2/ghcr.io/org/app/manifests/v1``), else from the
``remoteurl`` upstream. What an upstream ``H`` serves is kept in local repositories named
``H/<name>`` (a ``:`` in ``H`` becomes ``_``); what the ``remoteurl`` upstream serves
under the name itself, as Distribution does.

Durations are seconds (``30``) or Go durations as Distribution writes them (``168h``,
``1h30m``, ``90s``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..names import is_valid_name

__all__ = ["Upstream", "parse_duration", "parse_upstreams", "upstream_from_remoteurl"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UPSTREAM_KEYS = frozenset({"host", "remoteurl", "username", "password", "ttl"})


@dataclass(frozen=True, slots=True)
class Upstream:
    """One registry mirrored by this one.

    ``host``: the name requests use for it (``?ns=``, or the first name component);
    empty for the ``remoteurl`` upstream. ``remoteurl``: ``scheme://host[:port]``.
    ``ttl``: seconds a tag fetched from it is served before it is asked again (None:
    ``proxy.ttl``).
    """

    host: str
    remoteurl: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ttl: float | None = None  # None: proxy.ttl

    @property
    def netloc(self) -> str:
        """``host[:port]`` of ``remoteurl``: what the client connects to."""
        return urlsplit(self.remoteurl).netloc

    @property
    def credential_keys(self) -> str:
        """Where its credentials are configured, for messages."""
        if self.host:
            return f"the username and password of upstream {self.host} in proxy.upstreams"
        return "proxy.username and proxy.password"

    @property
    def prefix(self) -> str:
        """What the names of the local repositories holding its content start with."""
        return f"{self.host.replace(':', '_')}/" if self.host else ""


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Go duration (``168h``, ``1h30m``, ``1.5s``); ValueError
    if it is neither or negative."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 5m or 168h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m[1]) * _UNITS[m[2]]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"expected a duration such as 30s, 5m or 168h, got {value!r}"
                ) from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"a duration must be zero or more seconds, got {value!r}")
    return seconds


def _remoteurl(value: Any, where: str) -> str:
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    try:
        port = parts.port  # ValueError: not a number, or out of range
    except ValueError:
        port = 0
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == 0
            or parts.path or parts.query):
        raise ValueError(
            f"{where}: remoteurl must be http(s)://host[:port], e.g. "
            f"https://registry-1.docker.io, got {value!r}"
        )
    return url


def upstream_from_remoteurl(
    remoteurl: str, username: str | None, password: str | None, ttl: float
) -> Upstream:
    """The upstream of Distribution's single-upstream keys (``proxy.remoteurl`` ...)."""
    return Upstream("", _remoteurl(remoteurl, "proxy"), username, password, ttl)


def parse_upstreams(value: Any) -> tuple[Upstream, ...]:
    """``proxy.upstreams``: a list of mappings (or, from the environment, that list as
    YAML/JSON text). Hosts must be unique; ValueError names what is wrong."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"not a YAML list of upstreams: {exc}") from exc
    if isinstance(value, tuple) and all(isinstance(u, Upstream) for u in value):
        return value
    if not isinstance(value, list):
        raise ValueError("expected a list of {host, remoteurl, username, password, ttl}")
    out: list[Upstream] = []
    for i, item in enumerate(value):
        where = f"upstream {i + 1}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected a mapping with host and remoteurl")
        unknown = sorted(set(map(str, item)) - _UPSTREAM_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_UPSTREAM_KEYS))}"
            )
        if "host" not in item or "remoteurl" not in item:
            raise ValueError(f"{where}: host and remoteurl are required")
        host = str(item["host"]).strip().lower()
        if not host or not is_valid_name(host.replace(":", "_")) or "/" in host:
            raise ValueError(f"{where}: host {item['host']!r} is not a registry host name")
        if any(u.host == host for u in out):
            raise ValueError(f"{where}: host {host!r} is listed twice")
        ttl = None if item.get("ttl") is None else parse_duration(item["ttl"])
        user = item.get("username")
        password = item.get("password")
        out.append(
            Upstream(
                host,
                _remoteurl(item["remoteurl"], where),
                None if user is None else str(user),
                None if password is None else str(password),
                ttl,
            )
        )
    return tuple(out)
