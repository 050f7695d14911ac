"""Where the registry listens: ``HOST:PORT`` as Distribution's ``http.addr`` means it.

Distribution listens with Go's ``net.Listen("tcp", addr)``: an empty host (``:5000``) or
``[::]`` is one socket on every address of both families (IPv6, with IPv4 as mapped
addresses), or on IPv4 alone where the kernel has no IPv6. asyncio would bind an empty
host as two sockets (two ports when the port is 0) and ``[::]`` as IPv6 only, so such a
host gets that one dual-stack socket made here. ``0.0.0.0`` stays IPv4 only (Go takes
IPv6 there too): an operator who names the IPv4 wildcard, e.g. behind an IPv4-only
firewall, gets IPv4.
"""

from __future__ import annotations

import errno
import socket
import ssl

from aiohttp import web

from .limits import ConnectionGuard
from .tls_accept import TlsSite

__all__ = ["WILDCARD_HOSTS", "listen_site", "listen_url", "url_host"]

WILDCARD_HOSTS = ("", "::")
# What an IPv6 socket or bind says where IPv6 is compiled out or turned off.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def listen_site(runner: web.BaseRunner, host: str, port: int,
                ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = 0.0,
                guard: ConnectionGuard | None = None) -> web.BaseSite:
    """The site that listens on ``host``:``port`` (binding happens here for a wildcard
    host, so a port in use raises OSError at once, as it does at ``start()`` otherwise).
    With ``ssl_context``, connections are accepted as :mod:`.tls_accept` says, a new one
    closed unless its handshake is done within ``handshake_timeout`` (0: 60 s), and
    counted by ``guard`` (installed on the runner's server) from then on, not only once
    its handshake is done."""
    if ssl_context is not None:
        sock = _every_address(port) if host in WILDCARD_HOSTS else None
        return TlsSite(runner, ssl_context, host=host if sock is None else None, port=port,
                       sock=sock, handshake_timeout=handshake_timeout, guard=guard)
    if host not in WILDCARD_HOSTS:
        return web.TCPSite(runner, host, port)
    return web.SockSite(runner, _every_address(port))


def _every_address(port: int) -> socket.socket:
    try:
        return _bound(socket.AF_INET6, ("::", port))
    except OSError as exc:
        if exc.errno not in _NO_IPV6:
            raise
    return _bound(socket.AF_INET, ("0.0.0.0", port))


def _bound(family: socket.AddressFamily, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host else host


def listen_url(scheme: str, host: str, runner: web.BaseRunner) -> str:
    """A URL that reaches the started ``runner`` on this machine, and where else it
    listens: a wildcard host is no address to connect to, ``localhost`` is."""
    bound = runner.addresses[0]
    if host not in WILDCARD_HOSTS:
        return f"{scheme}://{url_host(host)}:{bound[1]}"
    families = "IPv4 and IPv6" if len(bound) == 4 else "IPv4"
    return f"{scheme}://localhost:{bound[1]} (every {families} address)"
