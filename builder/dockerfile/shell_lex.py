"""Variable expansion and word splitting for Dockerfile words, as BuildKit's shell lexer does.

Contract: :meth:`Lexer.process_word` turns one Dockerfile word into its value -- quotes
removed, escapes applied, ``$VAR`` / ``${VAR...}`` substituted from an environment mapping;
:meth:`Lexer.process_words` does the same and then splits the result into words at
unquoted whitespace (whitespace that came out of a variable splits too, quoted whitespace
does not). Neither runs a command: there is no command substitution, no globbing, no
arithmetic.

Supported parameter forms (the ones BuildKit supports, nothing more):

    $NAME ${NAME}                  value, or "" when unset
    ${NAME:-word} ${NAME-word}     word when unset (":" also: when empty)
    ${NAME:+word} ${NAME+word}     word when set (":" also: and not empty)
    ${NAME:?msg} ${NAME?msg}       error "NAME: msg" when unset (":" also: when empty)
    ${NAME#pat} ${NAME##pat}       strip shortest / longest prefix matching a glob
    ${NAME%pat} ${NAME%%pat}       strip shortest / longest suffix matching a glob
    ${NAME/pat/rep} ${NAME//pat/rep}  replace first / every glob match

Globs know ``*`` and ``?`` (no bracket expressions). Positional and special parameters
(``$1``, ``$@``, ``$$``...) are never set in a Dockerfile and expand to "".

One deliberate difference: BuildKit's current lexer shares one word buffer between a
word and the default/alternative text of a ``${VAR:-text}`` inside it, so splitting
``ab${X:-c}d`` yields ``cd`` there; here it yields ``abcd``, as a shell does.

The escape character is ``\\`` unless the Dockerfile's ``# escape=`` directive chose the
backtick. Inside single quotes nothing is special; inside double quotes the escape
character only escapes ``"``, ``$`` and itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ExpansionResult", "Lexer", "ShellLexError", "process_word", "process_words"]

_EOF = ""  # the scanner returns this past the end; real characters are never empty


class ShellLexError(ValueError):
    """A word could not be expanded; the message says which word and why."""


@dataclass(frozen=True)
class ExpansionResult:
    """What one expansion produced: the word, its split form, and which names it looked up."""

    result: str
    words: tuple[str, ...]
    matched: frozenset[str] = field(default_factory=frozenset)
    unmatched: frozenset[str] = field(default_factory=frozenset)


class _Words:
    """Accumulates split words; whitespace from plain text or variables ends a word."""

    def __init__(self) -> None:
        self.buf = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            # An empty quoted string ("") marks in_word but leaves buf empty: it
            # contributes no word of its own, exactly as BuildKit does.
            if self.in_word and self.buf:
                self.words.append(self.buf)
                self.buf = ""
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.buf += text
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.buf:
            self.words.append(self.buf)
            self.buf = ""
            self.in_word = False
        return self.words


class _Scan:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch


_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_REGEX_SPECIAL = frozenset("[]{}.+()|^$")


class Lexer:
    """Expands Dockerfile words.

    The flags exist for the parser's own uses (finding heredoc markers): ``raw_quotes``
    keeps quote characters in the output, ``raw_escapes`` keeps escape characters,
    ``skip_process_quotes`` treats quotes as plain characters, ``skip_unset_env`` leaves
    references to unset variables as written.
    """

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_process_quotes: bool = False,
        skip_unset_env: bool = False,
    ) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape character must be \\ or `, not {escape!r}")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """Expand ``word`` with ``env``; raise :class:`ShellLexError` on a bad word."""
        return self.expand(word, env).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expand ``word`` and split the result into words (see the module docstring)."""
        return list(self.expand(word, env).words)

    def expand(self, word: str, env: Mapping[str, str]) -> ExpansionResult:
        """Expand ``word``; also report which variable names were found and which not."""
        run = _Run(self, word, env)
        try:
            result, words = run.process_stop_on(_EOF, self.raw_escapes)
        except ShellLexError as exc:
            raise ShellLexError(f"failed to process {_go_quote(word)}: {exc}") from None
        return ExpansionResult(
            result, tuple(words), frozenset(run.matched), frozenset(run.unmatched)
        )


class _Run:
    """State of one expansion (the lexer itself stays reusable and thread-safe)."""

    def __init__(self, lex: Lexer, word: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.scan = _Scan(word)
        self.env = env
        self.raw_escapes = lex.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._process_stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _process_stop_on(self, stop: str) -> tuple[str, list[str]]:
        lex, scan = self.lex, self.scan
        result: list[str] = []
        words = _Words()
        quotes = not lex.skip_process_quotes
        while scan.peek() != _EOF:
            ch = scan.peek()
            if stop != _EOF and ch == stop:
                scan.next()
                return "".join(result), words.result()
            if ch == "$":
                text = self.process_dollar()
                result.append(text)
                words.add_string(text)
            elif ch == "<":
                text = self.process_possible_heredoc()
                result.append(text)
                words.add_raw(text)
            elif quotes and ch in "'\"":
                text = self.process_single_quote() if ch == "'" else self.process_double_quote()
                result.append(text)
                words.add_raw(text)
            else:
                ch = scan.next()
                if ch == lex.escape:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = scan.next()
                    if ch == _EOF:  # an escape at the very end escapes nothing
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop != _EOF:
            raise ShellLexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def process_single_quote(self) -> str:
        scan, out = self.scan, []
        ch = scan.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            ch = scan.next()
            if ch == _EOF:
                raise ShellLexError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def process_double_quote(self) -> str:
        scan, esc, out = self.scan, self.lex.escape, []
        ch = scan.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            peek = scan.peek()
            if peek == _EOF:
                raise ShellLexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if peek == '"':
                ch = scan.next()
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if peek == "$":
                out.append(self.process_dollar())
                continue
            ch = scan.next()
            if ch == esc:
                if self.raw_escapes:
                    out.append(ch)
                nxt = scan.peek()
                if nxt == _EOF:
                    continue  # the missing closing quote is reported next round
                if nxt in ('"', "$", esc):
                    ch = scan.next()
            out.append(ch)

    def process_dollar(self) -> str:
        scan = self.scan
        scan.next()
        if scan.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset_env:
                return "$" + name
            return value
        scan.next()
        peek = scan.peek()
        if peek == _EOF:
            raise ShellLexError("syntax error: missing '}'")
        if peek in "{}:":
            raise ShellLexError("syntax error: bad substitution")
        name = self.process_name()
        ch = scan.next()
        if ch == _EOF:
            raise ShellLexError("syntax error: missing '}'")
        modifier = ch
        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self._replace(name)
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = scan.next()
            modifier += ch
        elif ch not in ("+", "-", "?", "#", "%"):
            raise ShellLexError(f"unsupported modifier ({modifier}) in substitution")
        pattern_like = ch in ("#", "%")
        if null_is_unset and pattern_like:
            raise ShellLexError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.process_stop_on("}", pattern_like)
        except ShellLexError:
            if scan.peek() == _EOF:
                raise ShellLexError("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"
        unset = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else value
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if not found:
                raise ShellLexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ShellLexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise ShellLexError(f"unsupported modifier ({modifier}) in substitution")

    def _replace(self, name: str) -> str:
        scan = self.scan
        replace_all = scan.peek() == "/"
        if replace_all:
            scan.next()
        try:
            pattern, _ = self.process_stop_on("/", True)
        except ShellLexError:
            if scan.peek() == _EOF:
                raise ShellLexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.process_stop_on("}", True)
        except ShellLexError:
            if scan.peek() == _EOF:
                raise ShellLexError("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _glob_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return regex.sub(lambda m: _go_template(replacement, m), value)
        m = regex.search(value)
        if m is None:
            return value
        return value[: m.start()] + replacement + value[m.end() :]

    def process_name(self) -> str:
        scan = self.scan
        name: list[str] = []
        while scan.peek() != _EOF:
            ch = scan.peek()
            if not name and ch.isdecimal():
                while scan.peek() != _EOF and scan.peek().isdecimal():
                    name.append(scan.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return scan.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name.append(scan.next())
        return "".join(name)

    def process_possible_heredoc(self) -> str:
        scan = self.scan
        scan.next()
        if scan.peek() != "<":
            return "<"
        scan.next()
        # keep the blanks of "<< EOF" inside the same word as the marker
        spaces = []
        while scan.peek() in ("\t", "\r", " ") and scan.peek() != _EOF:
            spaces.append(scan.next())
        return "<<" + "".join(spaces)

    def get_env(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _glob_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Compile a shell glob (``*``, ``?``, ``\\`` escapes) into a regular expression."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    scan = _Scan(pattern)
    while (tok := scan.next()) != _EOF:
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            if scan.peek() in ("}", "/") and scan.peek() != _EOF:
                continue  # escaped only to get past the ${...} syntax
            tok = scan.next()
            if tok not in ("*", "?", "\\"):
                shown = tok if tok else "\\"
                raise ShellLexError(f"invalid pattern ({pattern}) in substitution: "
                                    f"invalid escape '\\{shown}'")
            out.append("\\" + tok)
        elif tok in _REGEX_SPECIAL:
            out.append("\\" + tok)
        else:
            out.append(re.escape(tok))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _glob_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[m.end() :] if m else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a glob but keep each ``\\x`` escape pair in order."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i != len(pattern) - 1:
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Regular expressions find the leftmost match, not the shortest rightmost one, so
    # reverse both the value and the pattern and strip a prefix instead.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


_TEMPLATE = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _go_template(template: str, m: re.Match[str]) -> str:
    """Expand ``$0``/``${0}``/``$$`` in a replace-all replacement as Go's regexp does."""

    def ref(t: re.Match[str]) -> str:
        if t.group(1) == "$":
            return "$"
        name = t.group(2) or t.group(3)
        return m.group(0) if name.isdigit() and int(name) == 0 else ""

    return _TEMPLATE.sub(ref, template)


def process_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Shorthand for ``Lexer(escape).process_word(word, env)``."""
    return Lexer(escape).process_word(word, env)


def process_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Shorthand for ``Lexer(escape).process_words(word, env)``."""
    return Lexer(escape).process_words(word, env)
