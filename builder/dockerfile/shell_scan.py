"""Reading a word one character at a time, for the shell lexer and its glob patterns.

:class:`Scanner` is a cursor over a text that returns :data:`EOF` past the end;
:class:`ShellLexError` is the one error the lexer (and anything it scans) raises.
:mod:`.shell_lex` re-exports the error: import it from there.
"""

from __future__ import annotations

__all__ = ["EOF", "Scanner", "ShellLexError"]

EOF = ""  # the scanner returns this past the end; real characters are never empty


class ShellLexError(ValueError):
    """A word could not be expanded; the message says which word and why."""


class Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch
