"""Variable expansion in Dockerfile instructions, as BuildKit's shell lexer does it.

``process_word`` expands one word (quotes removed, ``\\`` escapes, ``$VAR``, ``${VAR}``,
``${VAR:-word}``, ``${VAR-word}``, ``${VAR:+word}``, ``${VAR+word}``, ``${VAR:?msg}``);
``process_words`` does the same and splits unquoted whitespace into separate words (for
``EXPOSE``, ``VOLUME`` and friends). Single quotes keep everything literal; inside double
quotes variables expand and only ``\\$``, ``\\"``, ``\\\\`` escape.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ExpansionError", "process_word", "process_words"]


class ExpansionError(ValueError):
    """A malformed ``${...}`` or a ``${VAR:?message}`` whose variable is unset."""


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str = "\\") -> None:
        self.s, self.i, self.env, self.esc = text, 0, env, escape

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        ch = self.peek()
        self.i += 1
        return ch

    def words(self, split: bool) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        started = False
        while self.i < len(self.s):
            ch = self.peek()
            if split and ch in " \t\n":
                self.i += 1
                if started:
                    words.append("".join(cur))
                    cur, started = [], False
                continue
            started = True
            if ch == "'":
                self.i += 1
                end = self.s.find("'", self.i)
                if end < 0:
                    raise ExpansionError(f"unterminated single quote in {self.s!r}")
                cur.append(self.s[self.i:end])
                self.i = end + 1
            elif ch == '"':
                self.i += 1
                cur.append(self.double_quoted())
            elif ch == self.esc:
                self.i += 1
                if self.i < len(self.s):
                    cur.append(self.take())
            elif ch == "$":
                cur.append(self.dollar())
            else:
                cur.append(self.take())
        if started:
            words.append("".join(cur))
        return words

    def double_quoted(self) -> str:
        out: list[str] = []
        while True:
            ch = self.take()
            if ch == "":
                raise ExpansionError(f"unterminated double quote in {self.s!r}")
            if ch == '"':
                return "".join(out)
            if ch == self.esc and self.peek() in ('"', "$", self.esc):
                out.append(self.take())
            elif ch == "$":
                self.i -= 1
                out.append(self.dollar())
            else:
                out.append(ch)

    def name(self) -> str:
        start = self.i
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.i += 1
        return self.s[start:self.i]

    def dollar(self) -> str:
        self.i += 1  # "$"
        if self.peek() == "{":
            self.i += 1
            name = self.name()
            if not name:
                raise ExpansionError(f"bad substitution in {self.s!r}: ${{ needs a name")
            if self.peek() == "}":
                self.i += 1
                return self.env.get(name, "")
            op = self.take()
            if op == ":":
                op += self.take()
            word = self.until_brace()
            value = self.env.get(name)
            unset_or_empty = value is None or (op.startswith(":") and value == "")
            if op in (":-", "-"):
                return self.expand(word) if unset_or_empty else (value or "")
            if op in (":+", "+"):
                return "" if unset_or_empty else self.expand(word)
            if op in (":?", "?"):
                if unset_or_empty:
                    raise ExpansionError(f"{name}: {self.expand(word) or 'is not set'}")
                return value or ""
            raise ExpansionError(f"unsupported modifier {op!r} in ${{{name}...}} of {self.s!r}")
        name = self.name()
        if not name:
            return "$"
        return self.env.get(name, "")

    def until_brace(self) -> str:
        depth, start = 1, self.i
        while self.i < len(self.s):
            ch = self.take()
            if ch == self.esc:
                self.i += 1
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return self.s[start:self.i - 1]
        raise ExpansionError(f"missing '}}' in {self.s!r}")

    def expand(self, word: str) -> str:
        return "".join(_Lexer(word, self.env, self.esc).words(split=False))


def process_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand ``text`` as one word (whitespace kept, quotes removed)."""
    return "".join(_Lexer(text, env, escape).words(split=False))


def process_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand ``text`` and split it on unquoted whitespace."""
    return _Lexer(text, env, escape).words(split=True)
