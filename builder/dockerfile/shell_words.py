"""Word splitting for the shell lexer: the accumulator of split words.

The lexer feeds it plain text, quoted text and variable values as it expands a word;
unquoted whitespace (from the text or from a variable) ends a word, quoted whitespace
does not.
"""

from __future__ import annotations

import re

__all__ = ["GO_SPACE", "Words", "split_go_space"]

# What Go's unicode.IsSpace calls whitespace, as BuildKit splits words: Python's isspace
# and \s also take the separators \x1c-\x1f, which BuildKit keeps inside a word.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACES_OR_NOT = re.compile(f"[{GO_SPACE}]+|[^{GO_SPACE}]+")
_NOT_SPACES = re.compile(f"[^{GO_SPACE}]+")


def split_go_space(text: str) -> list[str]:
    """``text.split()`` at Go's whitespace."""
    return _NOT_SPACES.findall(text)


class Words:
    """Accumulates split words; whitespace from plain text or variables ends a word."""

    __slots__ = ("buf", "in_word", "words")

    def __init__(self) -> None:
        self.buf: list[str] = []  # pieces of the current word, never empty strings
        self.words: list[str] = []
        self.in_word = False

    def _space(self) -> None:
        # An empty quoted string ("") marks in_word but leaves buf empty: it
        # contributes no word of its own, exactly as BuildKit does.
        if self.in_word and self.buf:
            self.words.append("".join(self.buf))
            self.buf = []
            self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACE:
            self._space()
        else:
            self.buf.append(ch)
            self.in_word = True

    def add_raw(self, text: str) -> None:
        if text:
            self.buf.append(text)
        self.in_word = True

    def add_string(self, text: str) -> None:
        """``add_char`` for every character of ``text``, a run at a time."""
        for run in _SPACES_OR_NOT.findall(text):
            if run[0] in GO_SPACE:
                self._space()
            else:
                self.buf.append(run)
                self.in_word = True

    def result(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf = []
            self.in_word = False
        return self.words
