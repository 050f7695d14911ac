"""Two independent pieces of a test's work (say, the same build by two builders, each a
subprocess) run at once instead of one after the other."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["both_at_once"]

_T = TypeVar("_T")
_U = TypeVar("_U")


def both_at_once(first: Callable[[], _T], second: Callable[[], _U]) -> tuple[_T, _U]:
    """``first()`` and ``second()`` run at once, each in a thread of its own; both are
    waited for, then the first one's error (else the second's) is raised, or both results
    are returned."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        one, two = pool.submit(first), pool.submit(second)
        errors = [one.exception(), two.exception()]  # each waits for its thread
    for error in errors:
        if error is not None:
            raise error
    return one.result(), two.result()
