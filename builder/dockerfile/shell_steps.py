"""Running the shell lexer's nested steps on an explicit stack instead of recursion.

A step of the expansion is a generator that yields the sub-steps it needs (a nested
``${...}`` or quoted string) and receives their results (or their exception);
:func:`drive` runs them on an explicit stack, so nesting depth is not limited by
Python's recursion limit and the work stays linear in the word.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["Step", "drive"]

Step = Generator["Step", Any, Any]


def drive(step: Step) -> Any:
    stack = [step]
    value: Any = None
    error: BaseException | None = None
    while True:
        top = stack[-1]
        try:
            sub = top.throw(error) if error is not None else top.send(value)
        except StopIteration as done:
            stack.pop()
            if not stack:
                return done.value
            value, error = done.value, None
            continue
        except BaseException as exc:
            stack.pop()
            if not stack:
                raise
            value, error = None, exc
            continue
        stack.append(sub)
        value, error = None, None
