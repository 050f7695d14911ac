"""Errors of the Dockerfile front end, and the helpers that word them.

    DockerfileError            a Dockerfile could not be parsed, typed or expanded;
                               carries file, line and column (1-based), the message
                               and an optional hint

Rendered as ``<message> at <file>:<line>:<column>[; <hint>]``, e.g.
``unknown instruction 'RUNN' at Dockerfile:3:1; did you mean RUN?``.

Every message comes from one of the small functions below, so the parser and the tests
word the same problem the same way (tests assert through these helpers). Messages say
what was found and what was expected; hints say what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "DockerfileError",
    "Problem",
    "bad_flag_value",
    "closest",
    "duplicate_flag",
    "expected_arguments",
    "flag_needs_value",
    "unknown_flag",
    "unknown_instruction",
    "with_suggestion",
]


class Problem(NamedTuple):
    """What went wrong, and (optionally) what to do about it."""

    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class DockerfileError(Exception):
    """A Dockerfile problem at ``file:line:column``.

    ``line`` and ``column`` are 1-based; ``column`` is 0 when only the line is known.
    ``end_line`` is the last line of the instruction the error belongs to.
    """

    def __init__(
        self, problem: Problem | str, *, file: str = "Dockerfile", line: int = 0,
        column: int = 0, end_line: int | None = None,
    ) -> None:
        if isinstance(problem, str):
            problem = Problem(problem)
        self.problem = problem
        self.message = problem.message
        self.hint = problem.hint
        self.file = file
        self.line = line
        self.column = column
        self.end_line = line if end_line is None else end_line
        super().__init__(str(self))

    @property
    def location(self) -> str:
        """``file:line:column`` (or ``file:line``, or ``file``) as editors understand it."""
        if not self.line:
            return self.file
        if not self.column:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"

    def __str__(self) -> str:
        text = f"{self.message} at {self.location}"
        return f"{text}; {self.hint}" if self.hint else text

    def relocated(self, file: str) -> DockerfileError:
        """The same error, reported against another file name."""
        return DockerfileError(
            self.problem, file=file, line=self.line, column=self.column, end_line=self.end_line
        )


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` (case-insensitive), or None if none is close."""
    by_upper = {c.upper(): c for c in candidates}
    match = difflib.get_close_matches(word.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[match[0]] if match else None


def with_suggestion(message: str, word: str, candidates: Iterable[str]) -> Problem:
    """A problem whose hint is "did you mean X?" when a candidate is close to ``word``."""
    best = closest(word, candidates)
    return Problem(message, f"did you mean {best}?" if best else "")


def unknown_instruction(name: str, known: Iterable[str]) -> Problem:
    """``unknown instruction 'RUNN'`` with hint ``did you mean RUN?``"""
    return with_suggestion(f"unknown instruction {name!r}", name, known)


def unknown_flag(instruction: str, flag: str, known: Iterable[str]) -> Problem:
    """``unknown flag --form for COPY`` with hint ``did you mean --from?`` or the list."""
    names = sorted(known)
    message = f"unknown flag --{flag} for {instruction}"
    best = closest(flag, names)
    if best:
        return Problem(message, f"did you mean --{best}?")
    if not names:
        return Problem(message, f"{instruction} takes no flags")
    return Problem(message, f"{instruction} accepts " + ", ".join(f"--{n}" for n in names))


def duplicate_flag(instruction: str, flag: str) -> Problem:
    return Problem(f"flag --{flag} given twice for {instruction}", "give it only once")


def flag_needs_value(instruction: str, flag: str) -> Problem:
    return Problem(f"flag --{flag} of {instruction} needs a value", f"write --{flag}=<value>")


def bad_flag_value(instruction: str, flag: str, value: str, expected: str) -> Problem:
    return Problem(f"invalid value {value!r} for --{flag} of {instruction}: expected {expected}")


def expected_arguments(instruction: str, expected: str, got: int | None = None) -> Problem:
    """``COPY requires at least two arguments, got 1``"""
    message = f"{instruction} requires {expected}"
    return Problem(message if got is None else f"{message}, got {got}")
