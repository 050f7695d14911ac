"""Dockerfile text -> untyped instruction nodes with line ranges (the first parsing stage).

This stage knows the *shape* of a Dockerfile, not what instructions mean:

- parser directives (``# syntax=``, ``# escape=``, ``# check=``) are recognised only at
  the very top, before any instruction, comment or blank line, and each only once;
- ``#`` comment lines are dropped, also inside a continued instruction;
- a line ending in the escape character (``\\`` or, after ``# escape=```, the backtick)
  continues on the next line; blank lines inside a continuation are skipped (with a
  warning, as BuildKit does);
- each instruction's arguments are split the way its keyword asks: JSON array (exec form)
  or raw text (shell form) for RUN/CMD/ENTRYPOINT/SHELL, key/value pairs for ENV/LABEL,
  words for ARG, whitespace-separated words for FROM/EXPOSE/ADD/COPY/VOLUME, the rest as
  one string; ``--flag`` words right after the keyword become ``flags``;
- heredocs (``<<EOF``, ``<<-EOF``, ``<<"EOF"``, several per line) are read for ADD, COPY
  and RUN (also behind ONBUILD), unless the instruction uses the JSON form.

Nothing is expanded here: ``$VAR`` and quotes stay as written (ENV/LABEL values keep their
quotes) and are resolved by :mod:`.stages` with :mod:`.shell_lex`.
Line numbers are 1-based. The keyword table (:class:`Keyword`) is defined here once and
used by the typed stage too.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from .errors import DockerfileError, Problem, unknown_instruction
from .line_parsers import (
    LineError,
    extract_flags,
    parse_healthcheck,
    parse_json,
    parse_maybe_json,
    parse_name_val,
    parse_words,
    split_ws,
)
from .shell_lex import Lexer, ShellLexError
from .shell_words import GO_SPACE

__all__ = [
    "Directive",
    "Heredoc",
    "Keyword",
    "Node",
    "ParseWarning",
    "SyntaxTree",
    "parse",
    "parse_heredoc_marker",
]


class Keyword(enum.StrEnum):
    """Every Dockerfile instruction name, upper case."""

    ADD = "ADD"
    ARG = "ARG"
    CMD = "CMD"
    COPY = "COPY"
    ENTRYPOINT = "ENTRYPOINT"
    ENV = "ENV"
    EXPOSE = "EXPOSE"
    FROM = "FROM"
    HEALTHCHECK = "HEALTHCHECK"
    LABEL = "LABEL"
    MAINTAINER = "MAINTAINER"
    ONBUILD = "ONBUILD"
    RUN = "RUN"
    SHELL = "SHELL"
    STOPSIGNAL = "STOPSIGNAL"
    USER = "USER"
    VOLUME = "VOLUME"
    WORKDIR = "WORKDIR"


_HEREDOC_KEYWORDS = frozenset({Keyword.ADD, Keyword.COPY, Keyword.RUN})
_DIRECTIVES = frozenset({"syntax", "escape", "check"})


@dataclass(frozen=True)
class Directive:
    """A parser directive from the top of the file (``name`` lower case)."""

    name: str
    value: str
    line: int


@dataclass(frozen=True)
class Heredoc:
    """One here-document: ``content`` is every line up to the terminator, as written.

    ``expand`` is False when the marker was quoted (``<<"EOF"``, ``<<'EOF'``): then the
    content must not be variable-expanded. ``chomp`` is ``<<-``: leading tabs of the
    content lines are to be stripped (the typed stage does that).
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclass(frozen=True)
class ParseWarning:
    line: int
    message: str


@dataclass(frozen=True)
class Node:
    """One instruction as written.

    ``args`` depend on the keyword: exec-form/JSON elements (``json`` True); the shell-form
    text as one string; ENV/LABEL as flattened key, value pairs (``legacy_kv`` for the
    old ``ENV key value`` form); ONBUILD has no args but a ``child`` node.
    ``column`` is where the keyword starts on ``start_line``.
    """

    keyword: Keyword
    written: str
    flags: tuple[str, ...]
    args: tuple[str, ...]
    original: str
    start_line: int
    end_line: int
    column: int = 1
    json: bool = False
    legacy_kv: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    child: Node | None = None
    comments: tuple[str, ...] = ()

    def error(self, problem: Problem | str, *, file: str, near: str = "") -> DockerfileError:
        """A :class:`DockerfileError` located at this node (at ``near`` when it is found
        on the instruction's first line)."""
        column = self.column
        if near:
            idx = self.original.find(near)
            first_len = len(self.original.split("\n", 1)[0])
            if 0 <= idx < first_len and self.start_line == self.end_line:
                column = self.column + idx
        return DockerfileError(
            problem, file=file, line=self.start_line, column=column, end_line=self.end_line
        )


@dataclass(frozen=True)
class SyntaxTree:
    """A parsed Dockerfile: its instruction nodes, escape character and directives."""

    nodes: tuple[Node, ...]
    escape: str = "\\"
    directives: tuple[Directive, ...] = ()
    warnings: tuple[ParseWarning, ...] = ()
    file: str = "Dockerfile"

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None


_WS = re.compile(r"[\t\v\f\r ]+")
_RE2_SPACE = " \t\n\f\r"  # \s of Go's regexp, as BuildKit's directive pattern
_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)[ \t\n\f\r]*=[ \t\n\f\r]*(.+?)[ \t\n\f\r]*$")
_HEREDOC = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$", re.DOTALL)


class _Directives:
    """Recognises directives until the first line that is not one."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.done = False
        self.escape = "\\"
        self.found: list[Directive] = []
        self._continuation = _continuation_regex(self.escape)

    def feed(self, line: str, lineno: int) -> bool:
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        m = _DIRECTIVE.match(line[1:].lstrip(_RE2_SPACE))
        if not m or m.group(1).lower() not in _DIRECTIVES:
            self.done = True
            return False
        name, value = m.group(1).lower(), m.group(2)
        if any(d.name == name for d in self.found):
            raise DockerfileError(
                Problem(f"only one {name} parser directive can be used",
                        "remove the repeated directive"),
                file=self.file, line=lineno, column=1,
            )
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(
                    Problem(f"invalid escape token {value!r}", "use ` or \\"),
                    file=self.file, line=lineno, column=1,
                )
            self.escape = value
            self._continuation = _continuation_regex(value)
        self.found.append(Directive(name, value, lineno))
        return True

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """(line without its continuation character, whether the instruction ends here)."""
        new, count = self._continuation.subn(lambda m: m.group(1) or "", line)
        return (new, False) if count else (line, True)


def _continuation_regex(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    # the escape character as the last non-blank, unless it is the only thing on the line
    # (then it is a continuation too); an escaped escape ("\\\\") is not told apart, as in
    # BuildKit.
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _is_comment(line: str) -> bool:
    return line.lstrip(GO_SPACE).startswith("#")


def _split_lines(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse(text: str, file: str = "Dockerfile") -> SyntaxTree:
    """Parse Dockerfile ``text`` into nodes; raise :class:`DockerfileError` on bad input."""
    text = text.removeprefix("\ufeff")
    lines = _split_lines(text)
    directives = _Directives(file)
    nodes: list[Node] = []
    warnings: list[ParseWarning] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        lineno = i
        stripped_nl = raw.rstrip("\r\n")
        body = stripped_nl.lstrip(GO_SPACE)
        if _is_comment(body):
            comment = body[1:].strip()
            comments = [*comments, comment] if comment else []
        if directives.feed(body, lineno):
            comments = comments[:-1]
            continue
        column = len(stripped_nl) - len(body) + 1
        if _is_comment(body):
            body = ""
        start = lineno
        body, ended = directives.trim_continuation(body)
        if ended and not body:
            continue
        buf = [body]
        empty_continuation = False
        while not ended and i < len(lines):
            raw = lines[i]
            i += 1
            if _is_comment(raw):
                continue
            part = raw.rstrip("\r\n")
            if not part.strip(GO_SPACE):
                empty_continuation = True
                continue
            part, ended = directives.trim_continuation(part)
            buf.append(part)
        line = "".join(buf)
        if empty_continuation:
            warnings.append(ParseWarning(i, "empty continuation line found in: " + line))
        try:
            node = _node_from_line(line, directives.escape)
        except LineError as exc:
            raise DockerfileError(exc.problem, file=file, line=start, column=column,
                                  end_line=i) from None
        node = replace(node, start_line=start, column=column, comments=tuple(comments))
        if _can_have_heredocs(node) and "<<" in line:
            docs, i = _read_heredocs(line, lines, i, file, start, column)
            node = replace(node, heredocs=docs)
            if node.child is not None:
                node = replace(node, child=replace(node.child, heredocs=docs))
        node = replace(node, end_line=i)
        if node.child is not None:
            node = replace(node, child=replace(
                node.child, start_line=node.start_line, end_line=i, column=column))
        nodes.append(node)
        comments = []
    if not nodes:
        raise DockerfileError(
            Problem("file with no instructions", "a Dockerfile needs at least a FROM line"),
            file=file, line=max(len(lines), 1),
        )
    return SyntaxTree(tuple(nodes), directives.escape, tuple(directives.found),
                      tuple(warnings), file)


def _can_have_heredocs(node: Node) -> bool:
    target = node.child if node.keyword is Keyword.ONBUILD and node.child else node
    return target.keyword in _HEREDOC_KEYWORDS and not target.json


def _read_heredocs(
    line: str, lines: list[str], i: int, file: str, start: int, column: int
) -> tuple[tuple[Heredoc, ...], int]:
    # Markers are found among the raw words of the line (quotes and escapes kept),
    # always with the backslash lexer, as BuildKit does.
    lex = Lexer("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lex.process_words(line, {})
    except ShellLexError:
        words = []
    docs = []
    for word in words:
        try:
            marker = parse_heredoc_marker(word)
        except ShellLexError as exc:
            raise DockerfileError(str(exc), file=file, line=start, column=column) from None
        if marker is None:
            continue
        content: list[str] = []
        while True:
            if i >= len(lines):
                raise DockerfileError(
                    Problem(f"unterminated heredoc {marker.name!r}",
                            f"end it with a line holding only {marker.name}"),
                    file=file, line=start, column=column, end_line=i,
                )
            raw = lines[i]
            i += 1
            candidate = raw.rstrip("\r\n")
            if marker.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == marker.name:
                break
            content.append(raw)
        docs.append(replace(marker, content="".join(content)))
    return tuple(docs), i


def parse_heredoc_marker(word: str) -> Heredoc | None:
    """The heredoc a word like ``<<EOF``, ``<<-"EOF"`` or ``3<<EOF`` opens, else None."""
    m = _HEREDOC.match(word)
    if not m or not m.group(3):
        return None
    rest = m.group(3)
    plain = Lexer("\\", skip_unset_env=True).process_words(rest, {})
    if len(plain) != 1:
        return None
    raw = Lexer("\\", raw_quotes=True, skip_unset_env=True).process_words(rest, {})
    if len(raw) != 1:
        raise ShellLexError(f"internal lexing of heredoc produced inconsistent results: {rest}")

    def quotes(w: str) -> int:
        return w.count("'") + w.count('"')

    # any quoting in the marker (so that quotes vanish when processed) turns off expansion
    return Heredoc(
        name=plain[0], content="", expand=quotes(plain[0]) == quotes(raw[0]),
        chomp=m.group(2) == "-", fd=int(m.group(1) or 0),
    )


# --- splitting one logical line --------------------------------------------------------


def _node_from_line(line: str, escape: str) -> Node:
    parts = _WS.split(line.strip(GO_SPACE), maxsplit=1)
    written = parts[0]
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = extract_flags(parts[1], escape)
        rest = rest.strip(GO_SPACE)
    try:
        keyword = Keyword(written.upper())
    except ValueError:
        raise LineError(unknown_instruction(written, list(Keyword))) from None
    args: tuple[str, ...] = ()
    is_json = legacy = False
    child = None
    if keyword is Keyword.ONBUILD:
        if rest:
            child = _node_from_line(rest, escape)
    elif keyword in (Keyword.ENV, Keyword.LABEL):
        args, legacy = parse_name_val(rest, keyword, escape)
    elif keyword is Keyword.ARG:
        args = tuple(parse_words(rest, escape))
    elif keyword in (Keyword.FROM, Keyword.EXPOSE):
        args = split_ws(rest)
    elif keyword in (Keyword.ADD, Keyword.COPY, Keyword.VOLUME):
        parsed = parse_json(rest)
        args, is_json = (parsed, True) if parsed is not None else (split_ws(rest), False)
    elif keyword in (Keyword.RUN, Keyword.CMD, Keyword.ENTRYPOINT, Keyword.SHELL):
        args, is_json = parse_maybe_json(rest)
    elif keyword is Keyword.HEALTHCHECK:
        args, is_json = parse_healthcheck(rest)
    else:  # MAINTAINER, STOPSIGNAL, USER, WORKDIR: the whole rest is one argument
        args = (rest,) if rest else ()
    return Node(
        keyword=keyword, written=written, flags=tuple(flags), args=args, original=line,
        start_line=0, end_line=0, json=is_json, legacy_kv=legacy, child=child,
    )
