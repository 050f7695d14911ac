"""How the pull-through cache talks to an upstream: its client, and the bounds on waiting.

An upstream is not trusted to answer, nor to go on answering. Every wait on it is bounded,
so that the mirror's clients (which share one upstream transfer, :mod:`.proxy_blobs`)
get an error instead of hanging:

- **No answer**: a request with no answer (no status line, or no byte of a small body)
  for :data:`UPSTREAM_READ_TIMEOUT` seconds is tried again, twice at most (the client's
  ``read_timeout`` and ``retries``). A token realm (401 challenge) is asked the same way.
- **A blob body that stops**: when no byte of a blob arrives for
  :data:`UPSTREAM_READ_TIMEOUT` seconds (each read of the body takes what one read of the
  connection brings, so this is the time since the last byte), the transfer fails with
  :class:`UpstreamStalled`, nothing of it is kept, and the clients streaming it are cut
  off (they retry; the next request asks the upstream again).

A body that keeps trickling (a byte now and then) is slow, not stalled: it is read for
as long as it lasts, and the clients streaming it get each byte as it comes.
"""

from __future__ import annotations

from ..client.auth import Credentials, HostAuth
from ..client.connections import WireError
from ..client.remote import ClientOptions, RegistryClient
from .proxy_config import Upstream

__all__ = ["UPSTREAM_READ_TIMEOUT", "UpstreamStalled", "no_credentials", "stalled", "upstream_client"]

# Seconds an upstream may stay silent: before it answers, or in the middle of a blob.
UPSTREAM_READ_TIMEOUT = 30.0


class UpstreamStalled(WireError):
    """A blob body from upstream that stopped arriving (see the module docstring)."""


def upstream_client(upstream: Upstream) -> RegistryClient:
    """A client for ``upstream``: its configured credentials and scheme (no probing of
    https first), few retries, and :data:`UPSTREAM_READ_TIMEOUT`. Only the configured
    credentials: none from the server's environment or Docker config (as Distribution),
    else every client of the mirror would pull with its operator's logins."""
    netloc = upstream.netloc
    creds = {}
    if upstream.username is not None:
        creds[netloc] = Credentials(upstream.username, upstream.password or "",
                                    source="the proxy configuration",
                                    fix=f"set {upstream.credential_keys} in this registry's "
                                        "configuration and restart it")
    plain = upstream.remoteurl.startswith("http:")
    options = ClientOptions(
        credentials=creds, insecure=frozenset({netloc}) if plain else frozenset(),
        loopback_insecure=plain, retries=2, backoff=0.2, read_timeout=UPSTREAM_READ_TIMEOUT,
        outage=0,  # an upstream that went down fails the mirror's requests at once
    )
    client = RegistryClient(options)
    client._bases[netloc] = upstream.remoteurl
    client._auth[netloc] = HostAuth(netloc, creds.get(netloc), lookup=False)
    return client


def stalled(exc: BaseException) -> bool:
    """Whether ``exc`` (a failed read of an upstream body) is a read that timed out."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain: SourceFailed <- WireError <- TimeoutError
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def no_credentials(upstream: Upstream, what: str) -> str:
    """The message for ``what`` refused by ``upstream`` when none are configured for it."""
    return (f"upstream {upstream.remoteurl} refused {what} without credentials: set "
            f"{upstream.credential_keys} in this registry's configuration and restart it")
