"""HTTP proxies named by the environment, taken as Docker, containerd, skopeo and every Go
program take them (``golang.org/x/net/http/httpproxy``):

- ``HTTPS_PROXY`` for ``https://`` requests, ``HTTP_PROXY`` for ``http://`` ones (the
  upper-case name first, then the lower-case one); a value without a scheme is
  ``http://``; ``user:password@`` in it is sent as ``Proxy-Authorization: Basic``.
- ``NO_PROXY``: a comma-separated list; ``*`` is every host; a domain name matches itself
  and its subdomains, one with a leading ``.`` its subdomains only; an IP address or a
  CIDR block matches addresses; an entry with ``:port`` matches that port only.
- ``localhost`` and loopback addresses are never proxied.

An ``https://`` request goes through a ``CONNECT`` tunnel (TLS is end to end, checked
against the registry's name); an ``http://`` one is sent to the proxy in absolute form.
Only proxies spoken to in plain HTTP are supported (as the proxies of most networks);
``https://`` and ``socks5://`` proxies are refused with an error that says so.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ClientError

__all__ = ["Proxies", "Proxy", "ProxyError", "aiohttp_proxy"]


class ProxyError(ClientError):
    """A proxy variable of the environment that cannot be used."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """Where to connect instead (``host:port``), what to authenticate with, and which
    variable named it (for messages)."""

    netloc: str
    authorization: str | None
    variable: str

    @property
    def host(self) -> str:
        return self.netloc.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.netloc.rpartition(":")[2])


def _split(netloc: str, default_port: int) -> tuple[str, int | None]:
    """``host`` (lower case, IPv6 without brackets) and ``port`` of ``host[:port]``."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
    else:
        host, port = netloc, ""
    return host.lower(), int(port) if port.isdigit() else (default_port if not port else None)


class Proxies:
    """The proxy settings of ``environ`` (default: this process's environment, as it is
    when the client starts)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ

        def first(*names: str) -> tuple[str, str]:
            for name in names:
                if env.get(name):
                    return name, env[name]
            return "", ""

        self._http = first("HTTP_PROXY", "http_proxy")
        self._https = first("HTTPS_PROXY", "https_proxy")
        self._no = [e.strip().lower() for e in first("NO_PROXY", "no_proxy")[1].split(",")
                    if e.strip()]

    def __bool__(self) -> bool:
        return bool(self._http[1] or self._https[1])

    def for_url(self, scheme: str, netloc: str) -> Proxy | None:
        """The proxy a request to ``scheme://netloc`` goes through, None: straight."""
        name, value = self._https if scheme == "https" else self._http
        if not value:
            return None
        host, port = _split(netloc, 443 if scheme == "https" else 80)
        if not self._use_proxy(host, port):
            return None
        return _parse(name, value)

    def _use_proxy(self, host: str, port: int | None) -> bool:
        if host == "localhost":
            return False
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            return False
        for entry in self._no:
            if entry == "*":
                return False
            name, entry_port = _split(entry, 0) if not _is_cidr(entry) else (entry, 0)
            if entry_port and entry_port != port:
                continue
            if ip is not None:
                try:
                    if ip in ipaddress.ip_network(name, strict=False):
                        return False
                except ValueError:
                    pass
                continue
            if name.startswith("."):
                if host.endswith(name):
                    return False
            elif host == name or host.endswith("." + name):
                return False
        return True


def _is_cidr(entry: str) -> bool:
    return "/" in entry


def _parse(name: str, value: str) -> Proxy:
    url = value if "://" in value else f"http://{value}"
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ProxyError(
            f"{name}={value}: a proxy spoken to over {parts.scheme}:// is not supported; "
            "give the proxy's http:// address (an https:// registry is still reached "
            "through it with TLS end to end, over CONNECT)")
    if not parts.hostname:
        raise ProxyError(f"{name}={value}: no proxy host in it; give one as http://HOST:PORT")
    try:
        port = parts.port or 80
    except ValueError:
        raise ProxyError(f"{name}={value}: the port is not a number; give one as "
                         "http://HOST:PORT") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(f"{host}:{port}", auth, name)


def aiohttp_proxy(proxies: Proxies, url: str) -> dict[str, Any]:
    """The keywords that send an aiohttp request to ``url`` through its proxy (none for
    a request that goes straight): for the parts of pybuild that speak aiohttp."""
    parts = urlsplit(url)
    proxy = proxies.for_url(parts.scheme, parts.netloc)
    if proxy is None:
        return {}
    headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
    return {"proxy": f"http://{proxy.netloc}", "proxy_headers": headers}
