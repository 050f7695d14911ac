"""A chain of jobs that run one after another on a thread pool, awaited from asyncio.

An ingest keeps two chains busy at once (the digest; the cut, keying and writing of
pieces): each chain's jobs must run in order, one at a time, and the two chains in
parallel. A job queued while its chain is busy is taken up by the thread that finishes
the previous one, without a round trip through the event loop: on a loaded machine
the loop thread may wait milliseconds for a core, and the chain would wait with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["JobChain", "outlast"]

T = TypeVar("T")


async def outlast(fut: asyncio.Future[T], interrupt: Callable[[], None] | None = None) -> T:
    """Wait for ``fut`` to end, even when the caller is cancelled meanwhile: the
    cancellation is raised once ``fut`` has ended, whatever its outcome (its failure, if
    it failed because it was interrupted, is the cancellation's doing). ``interrupt`` is
    called at the first cancellation, to make work that waits on something end sooner."""
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError as exc:
            if fut.done():  # it has ended (or was itself cancelled): nothing runs any more
                raise (cancelled or exc) from None
            if cancelled is None and interrupt is not None:
                interrupt()
            cancelled = cancelled or exc
            continue
        except BaseException:
            if cancelled is not None:
                raise cancelled from None
            raise
        if cancelled is not None:
            raise cancelled
        return result


class JobChain:
    """Runs ``fn(arg)`` jobs in submission order, at most one at a time, on ``pool``.

    Contracts:

    - :meth:`submit` (from the event loop) returns a future that resolves when the job
      has run, with its exception if it raised.
    - Once a job fails, every later job fails with the same exception without running.
    - Futures resolve in submission order, each after its job's thread is done with it:
      when the last submitted future is done, no thread works for the chain any more.
    - Await the futures through ``asyncio.shield`` (cancelling one does not stop its job).
    """

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[[Any], None], Any, asyncio.Future[None]]] = deque()
        self._running = False
        self._failure: BaseException | None = None
        self.last: asyncio.Future[None] | None = None

    def submit(self, fn: Callable[[Any], None], arg: Any) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.last = fut
        with self._lock:
            self._queue.append((fn, arg, fut))
            if self._running:
                return fut
            self._running = True
        try:
            self._pool.submit(self._drain, loop)
        except BaseException as exc:
            # The pool refused (it was shut down): the jobs will never run, so their
            # futures fail now - a caller waiting for the chain's last job must not hang.
            with self._lock:
                self._running = False
                dropped = [f for _, _, f in self._queue]
                self._queue.clear()
            for f in dropped:
                _resolve(f, exc)
            raise
        return fut

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                fn, arg, fut = self._queue.popleft()
            error = self._failure
            if error is None:
                try:
                    fn(arg)
                except BaseException as exc:  # reported through the future
                    error = self._failure = exc
            try:
                loop.call_soon_threadsafe(_resolve, fut, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for the result any more


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
