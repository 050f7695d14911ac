"""Argument splitters for one logical Dockerfile line (used by :mod:`.syntax`).

Each function takes the text after the keyword (and after its flags) and splits it the
way one family of instructions needs; none expands variables or removes quotes, except
:func:`extract_flags`, which removes the quotes inside ``--flag="..."`` as BuildKit does.
Errors are :class:`LineError`; the caller adds the location.
"""

from __future__ import annotations

import json
import re

from .errors import Problem
from .shell_words import GO_SPACE

__all__ = [
    "LineError",
    "extract_flags",
    "parse_healthcheck",
    "parse_json",
    "parse_maybe_json",
    "parse_name_val",
    "parse_words",
    "split_ws",
]

WS = re.compile(r"[\t\v\f\r ]+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class LineError(Exception):
    """A line could not be split; ``problem`` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def extract_flags(text: str, escape: str) -> tuple[str, list[str]]:
    """Split leading ``--flag[=value]`` words off ``text``; quotes in a flag are removed.

    A bare ``--`` ends the flags.
    """
    words: list[str] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in GO_SPACE:
            pos += 1
        if pos >= n:
            return "", words
        if not text.startswith("--", pos):
            return text[pos:], words
        word: list[str] = []
        blank_ok = False
        quote = ""
        while pos < n:
            ch = text[pos]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == escape:
                    if pos + 1 == n:
                        quote = ""
                    else:
                        pos += 1
                        word.append(text[pos])
                else:
                    word.append(ch)
                pos += 1
                continue
            if ch in GO_SPACE:
                break
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == escape:
                if pos + 1 < n:
                    pos += 1
                    word.append(text[pos])
            else:
                word.append(ch)
            pos += 1
        flag = "".join(word)
        if flag == "--":
            return text[pos:], words
        if blank_ok or flag:
            words.append(flag)


def parse_words(text: str, escape: str) -> list[str]:
    """Split at unquoted whitespace, keeping quotes and escapes in the words."""
    words: list[str] = []
    word: list[str] = []
    in_word = blank_ok = False
    quote = ""
    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if pos + 1 == n:
                    quote = ""
                    pos += 1
                    continue
                word.append(ch)
                pos += 1
                ch = text[pos]
            word.append(ch)
            pos += 1
            continue
        if ch in GO_SPACE:
            if in_word and (blank_ok or word):
                words.append("".join(word))
            word, in_word, blank_ok = [], False, False
            pos += 1
            continue
        in_word = True
        if ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape:
            if pos + 1 == n:
                pos += 1
                continue
            word.append(ch)
            pos += 1
            ch = text[pos]
        word.append(ch)
        pos += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def parse_name_val(text: str, keyword: str, escape: str) -> tuple[tuple[str, ...], bool]:
    words = parse_words(text, escape)
    if not words:
        return (), False
    if "=" not in words[0]:
        parts = WS.split(text, maxsplit=1)
        if len(parts) < 2:
            raise LineError(Problem(
                f"{keyword} must have two arguments",
                f"write {keyword} <key>=<value> (or the old form {keyword} <key> <value>)"))
        return (parts[0], parts[1]), True
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise LineError(Problem(
                f"syntax error - can't find = in {word!r}", "must be of the form: name=value"))
        key, _, value = word.partition("=")
        out += [key, value]
    return tuple(out), False


def split_ws(text: str) -> tuple[str, ...]:
    return tuple(WS.split(text)) if text else ()


def _not_json(name: str) -> None:
    # NaN and Infinity are no JSON to Go, so BuildKit reads ``CMD [NaN]`` as a shell form
    raise ValueError(name)


def parse_json(text: str) -> tuple[str, ...] | None:
    """The elements of a JSON string array, None if ``text`` is not a JSON array."""
    text = text.lstrip(GO_SPACE)
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):  # nested too deep: not JSON to BuildKit either
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise LineError(Problem(
            "when using JSON array syntax, arrays must be comprised of strings only",
            'quote every element, e.g. ["sleep", "10"]'))
    # Go's encoding/json reads an escaped surrogate without its pair ("\ud800") as U+FFFD;
    # Python keeps it, and no program can be given it (it is no UTF-8)
    return tuple(_LONE_SURROGATE.sub("\ufffd", v) for v in value)


def parse_maybe_json(text: str) -> tuple[tuple[str, ...], bool]:
    if not text:
        return (), False
    parsed = parse_json(text)
    return (parsed, True) if parsed is not None else ((text,), False)


def parse_healthcheck(text: str) -> tuple[tuple[str, ...], bool]:
    parts = re.split(r"\s+", text, maxsplit=1)
    if not text or not parts[0]:
        return (), False
    cmd, is_json = parse_maybe_json(parts[1] if len(parts) > 1 else "")
    return (parts[0], *cmd), is_json
