"""The glob patterns of ``${NAME#pat}``, ``${NAME%pat}`` and ``${NAME/pat/rep}``.

A pattern knows ``*``, ``?`` and ``\\`` escapes (no bracket expressions) and is compiled
to a regular expression; :func:`trim_prefix` and :func:`trim_suffix` strip the shortest
or longest match, and :func:`go_template` expands a replace-all replacement as Go's
regexp does (BuildKit replaces with it).
"""

from __future__ import annotations

import re

from .shell_scan import EOF, Scanner, ShellLexError

__all__ = ["glob_regex", "go_template", "trim_prefix", "trim_suffix"]

_REGEX_SPECIAL = frozenset("[]{}.+()|^$")


def glob_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Compile a shell glob (``*``, ``?``, ``\\`` escapes) into a regular expression."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    scan = Scanner(pattern)
    while (tok := scan.next()) != EOF:
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            if scan.peek() in ("}", "/") and scan.peek() != EOF:
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


def trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = glob_regex(pattern, greedy=greedy, anchored=True).search(value)
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


def trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Regular expressions find the leftmost match, not the shortest rightmost one, so
    # reverse both the value and the pattern and strip a prefix instead.
    return trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


_TEMPLATE = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def go_template(template: str, m: re.Match[str]) -> str:
    """Expand ``$0``/``${0}``/``$$`` in a replace-all replacement as Go's regexp does."""

    def ref(t: re.Match[str]) -> str:
        if t.group(1) == "$":
            return "$"
        name = t.group(2) or t.group(3)
        return m.group(0) if name.isdigit() and int(name) == 0 else ""

    return _TEMPLATE.sub(ref, template)
