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

This module holds the lexer and the state of one expansion; its parts live beside it:
:mod:`.shell_scan` (the cursor and :class:`ShellLexError`), :mod:`.shell_words` (word
splitting), :mod:`.shell_steps` (nested steps on an explicit stack) and
:mod:`.shell_patterns` (the globs of ``#``, ``%`` and ``/``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .shell_patterns import glob_regex, go_template, trim_prefix, trim_suffix
from .shell_scan import EOF, Scanner, ShellLexError
from .shell_steps import Step, drive
from .shell_words import GO_SPACE, Words, split_go_space

__all__ = ["MAX_NESTING", "ExpansionResult", "Lexer", "ShellLexError", "process_word",
           "process_words"]


@dataclass(frozen=True)
class ExpansionResult:
    """What one expansion produced: the word, its split form, and which names it looked up."""

    result: str
    words: tuple[str, ...]
    matched: frozenset[str] = field(default_factory=frozenset)
    unmatched: frozenset[str] = field(default_factory=frozenset)


# ``${...}`` nested deeper than this is refused with an error. BuildKit's lexer recurses
# without a limit of its own (Go's stack grows to 1 GB); here expansion runs on an
# explicit stack, so the limit only bounds memory, far above what a Dockerfile needs.
MAX_NESTING = 10_000

# A word quoted in an error message is cut to this many characters.
_QUOTED_MAX = 200

_SPECIAL_PARAMS = frozenset("@*#?-$!0")


@functools.lru_cache(maxsize=32)
def _plain_run(specials: str) -> re.Pattern[str]:
    """A run of characters that are neither whitespace nor one of ``specials``."""
    return re.compile("[^" + re.escape(specials) + GO_SPACE + "]+")


@functools.lru_cache(maxsize=8)
def _quoted_run(escape: str) -> re.Pattern[str]:
    """A run of characters inside double quotes with no meaning of their own."""
    return re.compile('[^"$' + re.escape(escape) + "]+")


class Lexer:
    """Expands Dockerfile words.

    The flags exist for the parser's own uses (finding heredoc markers): ``raw_quotes``
    keeps quote characters in the output, ``raw_escapes`` keeps escape characters,
    ``skip_process_quotes`` treats quotes as plain characters, ``skip_unset_env`` leaves
    references to unset variables as written.

    Expansion takes time and memory linear in the length of the word and its result.
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
        self._special = re.compile("[" + re.escape("$<'\"" + escape) + "]")

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """Expand ``word`` with ``env``; raise :class:`ShellLexError` on a bad word."""
        return self.expand(word, env).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expand ``word`` and split the result into words (see the module docstring)."""
        return list(self.expand(word, env).words)

    def expand(self, word: str, env: Mapping[str, str]) -> ExpansionResult:
        """Expand ``word``; also report which variable names were found and which not."""
        if self._special.search(word) is None:  # nothing to expand: the common case
            return ExpansionResult(word, tuple(split_go_space(word)))
        run = _Run(self, word, env)
        try:
            result, words = drive(run.process_stop_on(EOF, self.raw_escapes))
        except ShellLexError as exc:
            raise ShellLexError(f"failed to process {_go_quote(word)}: {exc}") from None
        return ExpansionResult(
            result, tuple(words), frozenset(run.matched), frozenset(run.unmatched)
        )


class _Run(Scanner):
    """State of one expansion (the lexer itself stays reusable and thread-safe)."""

    def __init__(self, lex: Lexer, word: str, env: Mapping[str, str]) -> None:
        super().__init__(word)
        self.lex = lex
        self.env = env
        self.raw_escapes = lex.raw_escapes
        self.depth = 0  # ${...} being expanded, one inside the other
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def process_stop_on(self, stop: str, raw_escapes: bool) -> Step:
        """Expand up to the unquoted ``stop`` character (consumed; ``EOF``: the end)."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            lex, text = self.lex, self.text
            end = len(text)
            result: list[str] = []
            words = Words()
            quotes = not lex.skip_process_quotes
            plain = _plain_run("$<" + ("'\"" if quotes else "") + lex.escape + stop)
            while self.pos < end:
                m = plain.match(text, self.pos)
                if m is not None:
                    run = m.group()
                    self.pos = m.end()
                    result.append(run)
                    words.add_raw(run)
                    continue
                ch = text[self.pos]
                if stop != EOF and ch == stop:
                    self.pos += 1
                    return "".join(result), words.result()
                if ch == "$":
                    if text.startswith("${", self.pos):
                        value = yield self.process_braces()
                    else:
                        value = self.process_dollar()
                    result.append(value)
                    words.add_string(value)
                elif ch == "<":
                    value = self.process_possible_heredoc()
                    result.append(value)
                    words.add_raw(value)
                elif quotes and ch in "'\"":
                    if ch == "'":
                        value = self.process_single_quote()
                    else:
                        value = yield self.process_double_quote()
                    result.append(value)
                    words.add_raw(value)
                else:
                    self.pos += 1
                    if ch == lex.escape:
                        if self.raw_escapes:
                            words.add_raw(ch)
                            result.append(ch)
                        ch = self.next()
                        if ch == EOF:  # an escape at the very end escapes nothing
                            break
                        words.add_raw(ch)
                    else:
                        words.add_char(ch)
                    result.append(ch)
            if stop != EOF:
                raise ShellLexError(
                    f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.result()
        finally:
            self.raw_escapes = saved

    def process_single_quote(self) -> str:
        start = self.pos + 1
        close = self.text.find("'", start)
        if close < 0:
            self.pos = len(self.text)
            raise ShellLexError(
                "unexpected end of statement while looking for matching single-quote")
        self.pos = close + 1
        body = self.text[start:close]
        return f"'{body}'" if self.lex.raw_quotes else body

    def process_double_quote(self) -> Step:
        text, esc = self.text, self.lex.escape
        end = len(text)
        plain = _quoted_run(esc)
        out = ['"'] if self.lex.raw_quotes else []
        self.pos += 1
        while True:
            m = plain.match(text, self.pos)
            if m is not None:
                out.append(m.group())
                self.pos = m.end()
                continue
            if self.pos >= end:
                raise ShellLexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                if text.startswith("${", self.pos):
                    out.append((yield self.process_braces()))
                else:
                    out.append(self.process_dollar())
                continue
            self.pos += 1  # the escape character
            if self.raw_escapes:
                out.append(ch)
            nxt = self.peek()
            if nxt == EOF:
                continue  # the missing closing quote is reported next round
            if nxt in ('"', "$", esc):
                ch = self.next()
            out.append(ch)

    def process_dollar(self) -> str:
        """``$NAME`` (or a lone ``$``); the caller sends ``${`` to :meth:`process_braces`."""
        self.pos += 1
        name = self.process_name()
        if not name:
            return "$"
        value, found = self.get_env(name)
        if not found and self.lex.skip_unset_env:
            return "$" + name
        return value

    def process_braces(self) -> Step:
        self.pos += 2
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise ShellLexError(
                    f"variable references nested more than {MAX_NESTING} deep "
                    "(${...} inside ${...}): nest fewer of them")
            return (yield from self._process_braces())
        finally:
            self.depth -= 1

    def _process_braces(self) -> Step:
        peek = self.peek()
        if peek == EOF:
            raise ShellLexError("syntax error: missing '}'")
        if peek in "{}:":
            raise ShellLexError("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        if ch == EOF:
            raise ShellLexError("syntax error: missing '}'")
        modifier = ch
        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return (yield self._replace(name))
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        elif ch not in ("+", "-", "?", "#", "%"):
            raise ShellLexError(f"unsupported modifier ({modifier}) in substitution")
        pattern_like = ch in ("#", "%")
        if null_is_unset and pattern_like:
            raise ShellLexError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = yield self.process_stop_on("}", pattern_like)
        except ShellLexError:
            if self.peek() == EOF:
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
                return trim_suffix(word, value, greedy)
            return trim_prefix(word, value, greedy)
        raise ShellLexError(f"unsupported modifier ({modifier}) in substitution")

    def _replace(self, name: str) -> Step:
        replace_all = self.peek() == "/"
        if replace_all:
            self.pos += 1
        try:
            pattern, _ = yield self.process_stop_on("/", True)
        except ShellLexError:
            if self.peek() == EOF:
                raise ShellLexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = yield self.process_stop_on("}", True)
        except ShellLexError:
            if self.peek() == EOF:
                raise ShellLexError("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = glob_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return regex.sub(lambda m: go_template(replacement, m), value)
        m = regex.search(value)
        if m is None:
            return value
        return value[: m.start()] + replacement + value[m.end() :]

    def process_name(self) -> str:
        text, start = self.text, self.pos
        end = len(text)
        if start >= end:
            return ""
        ch = text[start]
        i = start
        if ch.isdecimal():
            while i < end and text[i].isdecimal():
                i += 1
        elif ch in _SPECIAL_PARAMS:
            i += 1
        else:
            while i < end and ((c := text[i]).isalpha() or c.isdecimal() or c == "_"):
                i += 1
        self.pos = i
        return text[start:i]

    def process_possible_heredoc(self) -> str:
        self.pos += 1
        if self.peek() != "<":
            return "<"
        self.pos += 1
        # keep the blanks of "<< EOF" inside the same word as the marker
        start = self.pos
        while self.peek() in ("\t", "\r", " ") and self.peek() != EOF:
            self.pos += 1
        return "<<" + self.text[start:self.pos]

    def get_env(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False


def _go_quote(text: str) -> str:
    if len(text) > _QUOTED_MAX:
        text = text[:_QUOTED_MAX] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def process_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Shorthand for ``Lexer(escape).process_word(word, env)``."""
    return Lexer(escape).process_word(word, env)


def process_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Shorthand for ``Lexer(escape).process_words(word, env)``."""
    return Lexer(escape).process_words(word, env)
