"""Stopping a build on SIGINT (Ctrl-C) or SIGTERM (a CI runner cancelling a job).

:func:`run_until_signal` runs the build's coroutine; the first of those signals cancels
it, so every running step is killed and cleaned up on the way out
(``builder.steps.run``), and :class:`Interrupted` says which signal it was.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Interrupted", "run_until_signal"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Interrupted(Exception):
    """The build was stopped by a signal (SIGINT: Ctrl-C, SIGTERM: a CI runner)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}: the build stopped "
                         "and its running steps were killed")


def run_until_signal(build: Coroutine[Any, Any, T]) -> T:
    """Run ``build``; SIGINT or SIGTERM cancels it -- every running step is killed and
    cleaned up on the way out (``builder.steps.run``) -- and raises :class:`Interrupted`."""

    received: list[int] = []

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            if not received:
                received.append(signum)
                task.cancel()

        handled = []
        for signum in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, stop, signum)
            except (ValueError, RuntimeError):  # not the main thread: leave signals be
                continue
            handled.append(signum)
        try:
            return await build
        except BaseException:
            if received:
                raise Interrupted(received[0]) from None
            raise
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # before the event loop took SIGINT over
        raise Interrupted(signal.SIGINT) from None
    except asyncio.CancelledError:  # the signal came as the build returned
        if received:
            raise Interrupted(received[0]) from None
        raise
