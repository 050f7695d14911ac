"""``.dockerignore`` patterns with Docker's rules (moby ``patternmatcher``).

Differences from gitignore that matter: every pattern is anchored at the context root
(``foo`` does not match ``a/foo``; write ``**/foo``); a pattern matches a path when it
matches the path or any of its parent directories; ``*`` and ``?`` never cross ``/``;
``**`` matches any number of directories (zero included); patterns are cleaned
(``./a//b/`` is ``a/b``; a leading ``/`` is dropped); ``\\`` escapes the next character
(``\\[1\\].txt`` is ``[1].txt``), ``[...]`` is a class (``[^...]`` negated; ``!`` is no
negation there, unlike fnmatch); ``!pattern`` re-includes; the last
matching pattern decides; ``#`` starts a comment line; a byte order mark is dropped and
lines may end in CRLF.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IgnoreFileError", "IgnoreMatcher", "Pattern", "name_matches", "read_ignore_file"]


class IgnoreFileError(ValueError):
    """A line of an ignore file that is no valid pattern (the message names file and line)."""


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    exclusion: bool
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, line: str) -> Pattern | None:
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        clean = posixpath.normpath(line).lstrip("/") if line else ""
        if clean in ("", "."):
            return None
        return cls(line, exclusion, tuple(clean.split("/")))

    def matches(self, parts: tuple[str, ...]) -> bool:
        """Does the pattern match this path or one of its parents?"""
        return bool(parts) and _path_regex([self]).fullmatch(_joined(parts)) is not None


_cache: dict[str, re.Pattern[str]] = {}


def _translate(pat: str) -> str:
    """One path component's pattern as a regular expression, as moby's patternmatcher
    compiles it: ``*`` and ``?`` (never ``/``), ``[...]`` a character class (``[^...]``
    negated; ``!`` is a plain character there), ``\\x`` the character ``x`` itself."""
    out = []
    in_class = False
    i = 0
    while i < len(pat):
        c = pat[i]
        if c == "\\":
            i += 1
            out.append(re.escape(pat[i]) if i < len(pat) else re.escape("\\"))
        elif in_class:
            in_class = c != "]"
            out.append(c if c != "[" else "\\[")
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            in_class = True
            out.append("(?!/)[")  # a class never matches the separator (as '*' and '?')
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _malformed(pattern: str) -> bool:
    """Whether moby refuses ``pattern`` (Go's ``filepath.Match`` calls it a syntax error):
    a ``[`` class that is not closed or is empty, or a trailing lone ``\\``."""
    if (len(pattern) - len(pattern.rstrip("\\"))) % 2:
        return True
    try:
        re.compile(_translate(pattern))
    except re.error:
        return True
    return False


def _segment_regex(pat: str) -> re.Pattern[str]:
    rx = _cache.get(pat)
    if rx is None:
        try:
            rx = re.compile(_translate(pat), re.DOTALL)
        except re.error:  # an unclosed class: moby refuses the pattern, it matches nothing
            rx = re.compile("(?!)")
        _cache[pat] = rx
    return rx


def _segment(pat: str, name: str) -> bool:
    return _segment_regex(pat).fullmatch(name) is not None


def name_matches(pattern: str, name: str) -> bool:
    """Whether the path component ``name`` matches ``pattern`` as Go's ``filepath.Match``
    takes it (BuildKit's COPY wildcards): ``[^...]`` is negated and ``!`` is a plain
    character there, unlike fnmatch. ValueError for a pattern Go calls a syntax error
    (an unclosed or empty ``[`` class, a trailing lone ``\\``)."""
    rx = _segment_regex(pattern)
    if rx.pattern == "(?!)" or (len(pattern) - len(pattern.rstrip("\\"))) % 2:
        raise ValueError(f"syntax error in pattern {pattern!r}")
    return rx.fullmatch(name) is not None


def _joined(parts: tuple[str, ...]) -> str:
    return "".join("/" + p for p in parts)


def _path_regex(patterns: list[Pattern]) -> re.Pattern[str]:
    """One regular expression for ``patterns`` (any of them), matched against a path
    written as ``/a/b/c`` (:func:`_joined`): each matches the path or a parent of it, as
    moby compiles a pattern to one expression, so that a path costs one match per run
    of patterns rather than one per pattern and parent."""
    anywhere: list[str] = []  # those that start with '**' share its expression
    anchored: list[str] = []
    for p in patterns:
        if any(_segment_regex(part).pattern == "(?!)" for part in p.parts):
            continue  # an unclosed class: moby refuses the pattern, it matches nothing
        parts = p.parts[1:] if p.parts[0] == "**" else p.parts
        (anywhere if parts is not p.parts else anchored).append(
            "".join("(?:/[^/]*)*" if part == "**" else "/" + _translate(part)
                    for part in parts))
    alternatives = anchored + ([f"(?:/[^/]*)*(?:{'|'.join(anywhere)})"] if anywhere else [])
    if not alternatives:
        return re.compile("(?!)")
    return re.compile(f"(?:{'|'.join(alternatives)})(?:/.*)?", re.DOTALL)


class IgnoreMatcher:
    """Decides whether a context path (``/``-separated, relative) is excluded."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)
        # runs of patterns that decide alike (all excluding, or all re-including), last
        # first: the last pattern that matches decides, so the first run that matches does
        self._runs = [(not run[0].exclusion, _path_regex(run)) for run in reversed(
            [list(g) for _, g in itertools.groupby(patterns, key=lambda p: p.exclusion)])]

    @classmethod
    def from_lines(cls, lines: list[str]) -> IgnoreMatcher:
        return cls([p for p in (Pattern.parse(line) for line in lines) if p is not None])

    def excluded(self, rel: str) -> bool:
        parts = tuple(p for p in rel.split("/") if p)
        if not parts:
            return False
        path = _joined(parts)
        for excludes, rx in self._runs:
            if rx.fullmatch(path) is not None:
                return excludes
        return False

    def may_reinclude_below(self, rel_dir: str) -> bool:
        """Could an exception pattern re-include something inside the excluded ``rel_dir``?

        Conservative (true unless no ``!`` pattern could reach below it), so a walk may
        skip an excluded directory only when this is false, as moby's walker does.
        """
        if not self.has_exclusions:
            return False
        parts = tuple(p for p in rel_dir.split("/") if p)
        for p in self.patterns:
            if not p.exclusion:
                continue
            prefix = p.parts[: len(parts)]
            if "**" in p.parts or all(_segment(a, b) for a, b in zip(prefix, parts)):
                return True
        return False


def read_ignore_file(context: Path, dockerfile: Path | None) -> IgnoreMatcher:
    """``<Dockerfile>.dockerignore`` next to the Dockerfile if present, else the context's
    ``.dockerignore`` (BuildKit's order); an empty matcher when neither exists."""
    candidates = []
    if dockerfile is not None:
        candidates.append(dockerfile.parent / (dockerfile.name + ".dockerignore"))
    candidates.append(context / ".dockerignore")
    for c in candidates:
        if c.is_file():
            # a UTF-8 byte order mark (editors on Windows write one) is not part of the
            # first pattern: moby's ReadAll trims it
            # (bytes that are not UTF-8 stay as they are, to match names that hold them)
            text = c.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
            lines = text.splitlines()
            for number, line in enumerate(lines, 1):
                pattern = Pattern.parse(line)
                if pattern is not None and _malformed(pattern.text):
                    # as the docker CLI and BuildKit: the build fails, rather than the
                    # pattern quietly excluding nothing
                    raise IgnoreFileError(
                        f"{c.name}:{number}: syntax error in pattern {pattern.text!r}: close "
                        "each '[' with ']' and end no pattern with a lone '\\' (escape a "
                        "literal one as '\\[' or '\\\\')")
            return IgnoreMatcher.from_lines(lines)
    return IgnoreMatcher([])
