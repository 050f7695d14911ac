"""How long the client waits for a registry that refuses connections (:class:`Refusals`),
and what it says when it gives up (:func:`unreachable_message`), for
:meth:`registry.client.session.RegistrySession._transmit`.

- A refused connection is retried ``QUICK_RETRIES`` times at once (backoff, under a
  second): a host never reached in this process that still refuses is at a wrong
  address or port, and the command fails fast, naming it.
- A host that has answered before and now refuses (or resets) connections is taken to
  be restarting (a deploy, a crash and its supervisor): its requests are retried with a
  growing backoff (at most ``MAX_DELAY`` s between tries) for up to
  ``ClientOptions.outage`` seconds in all, counted from its first refusal, so the
  requests that meet one outage give up together. Docker's push does the same for a
  layer upload (5 tries, waiting 5, 10, 15 and 20 s).
- A token server (the realm of a Bearer challenge) is held to the same rule
  (``RegistrySession._fetch``): one that gave a token earlier in this process and now
  refuses is waited for, so a token fetched again mid-push rides out its restart.
- Each round of retries is told once, whichever request makes it (``cannot connect to
  HOST (connection refused): retrying in 2 s (refusing for 4 s; giving up after 30 s)``),
  through ``ClientOptions.notice``: a line in plain progress, a ``message`` event with
  ``--json``, so a CI log says why a push waits.

Nothing is re-sent blindly: a connection that was refused carried no bytes, and a
request whose connection broke is retried by its caller, which asks an upload session
where it stands first (:mod:`registry.client.push`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from .connections import UnknownHost, Unreachable

__all__ = ["MAX_DELAY", "QUICK_RETRIES", "Refusals", "unreachable_message"]

QUICK_RETRIES = 2
MAX_DELAY = 5.0


class Refusals:
    """The hosts refusing connections now: since when, and the last round told."""

    def __init__(self, backoff: float, outage: float,
                 notice: Callable[[str], None] | None) -> None:
        self.backoff, self.outage, self.notice = backoff, outage, notice
        self._since: dict[str, float] = {}
        self._told: dict[str, int] = {}

    def delay(self, netloc: str, attempt: int, reached: bool, reason: str) -> float | None:
        """Seconds to wait before connecting to ``netloc`` again after its ``attempt``-th
        (from 0) refusal in a row; ``reached``: it has answered before (``outage`` 0: no
        more than a host that has not). None: give up."""
        wait = min(MAX_DELAY, self.backoff * 2.0**attempt)
        if not reached or self.outage <= 0:
            return wait if attempt < QUICK_RETRIES else None
        now = time.monotonic()
        since = self._since.setdefault(netloc, now)
        left = since + self.outage - now
        if left <= 0:
            return None
        wait = min(wait, left)
        if self.notice is not None and self._told.get(netloc, -1) < attempt:
            self._told[netloc] = attempt
            self.notice(f"cannot connect to {netloc} ({reason}): retrying in {wait:.2g} s "
                        f"(refusing for {now - since:.0f} s; giving up after {self.outage:g} s)")
        return wait

    def retry_in(self, netloc: str, exc: Unreachable, attempt: int, reached: bool) -> float | None:
        """:meth:`delay` after the connection failure ``exc``, if it is one worth waiting
        out: a refusal, or a reset from a host that answered before (connected, then closed
        unserved: one going down). None: give up."""
        refused = isinstance(exc.__cause__, ConnectionRefusedError) or (
            reached and isinstance(exc.__cause__, ConnectionResetError))
        return self.delay(netloc, attempt, reached, exc.reason) if refused else None

    async def ride_out(self, netloc: str, exc: Unreachable, attempt: int, reached: bool) -> None:
        """Wait as :meth:`retry_in` says before trying ``netloc`` again, or raise ``exc``
        (saying for how long it refused) when that is to give up."""
        delay = self.retry_in(netloc, exc, attempt, reached)
        if delay is None:
            exc.args = (f"{exc}{self.gave_up(netloc)}",)
            raise exc
        await asyncio.sleep(delay)

    def answered(self, netloc: str) -> None:
        """``netloc`` took a connection: its outage, if any, is over."""
        if self._since.pop(netloc, None) is not None:
            self._told.pop(netloc, None)

    def gave_up(self, netloc: str) -> str:
        """What a message that ``netloc`` cannot be reached adds: for how long it refused."""
        since = self._since.get(netloc)
        return "" if since is None else \
            f" (it answered earlier, then refused connections for {time.monotonic() - since:.0f} s)"


def unreachable_message(exc: Unreachable, after: str = "") -> str:
    """What the client's ``Unreachable`` says for the connection failure ``exc``, with
    ``after`` (:meth:`Refusals.gave_up`) after the reason."""
    host = exc.netloc
    if exc.proxy:
        return (f"cannot connect to {exc.proxy} on the way to {host} ({exc.reason}){after}: "
                f"is the proxy running at that address? To reach {host} directly, list it "
                "in NO_PROXY")
    if isinstance(exc, UnknownHost):
        name = urlsplit(f"//{host}").hostname or host
        return (f"registry host {name} is unknown ({exc.reason}); check the registry's host "
                "name, and the DNS set-up")
    return (f"cannot connect to registry {host} ({exc.reason}){after}: is the registry "
            f"running, and is {host} its address and port?")
