"""The ``created_by`` texts of history entries, as BuildKit's Dockerfile frontend writes them.

BuildKit formats most of them with Go's ``fmt`` verbs (``CMD %q`` of a string slice,
``HEALTHCHECK %q`` of a config pointer, ``SHELL %v``), and ``docker history`` shows them
as they are; tools that read history (and people comparing two builds of one Dockerfile)
see the same text only if the quoting is Go's, not JSON's. A RUN's text starts with the
build args the stage declared (``RUN |2 A=1 B=2 /bin/sh -c ...``), an ARG has an entry of
its own and ONBUILD has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["arg_created_by", "go_duration", "go_quote", "go_quote_rune", "go_slice_q",
           "healthcheck_created_by", "run_args_prefix"]

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\v": "\\v"}


def _quoted(text: str, quote: str) -> str:
    """Go's strconv quoting (``appendQuotedWith``): printable runes as they are, the
    rest escaped; a byte that was not UTF-8 (a surrogate escape) as ``\\xNN``."""
    out = [quote]
    for ch in text:
        code = ord(ch)
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def go_quote(text: str) -> str:
    """``fmt.Sprintf("%q", text)``."""
    return _quoted(text, '"')


def go_quote_rune(value: int) -> str:
    """``%q`` of an integer: Go quotes it as a character (``'\\x03'``); a value that is no
    Unicode code point (a surrogate, past U+10FFFF) as U+FFFD, as Go does."""
    if not 0 <= value <= 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        value = 0xFFFD
    return _quoted(chr(value), "'")


def go_slice_q(values: Iterable[str]) -> str:
    """``%q`` of a string slice: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(v) for v in values) + "]"


def go_duration(ns: int) -> str:
    """``time.Duration.String()``: ``0s``, ``1.5s``, ``5m0s``, ``1h0m0s``, ``250ms``."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def fraction(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        digits = len(str(unit)) - 1
        return str(whole) + (("." + f"{rest:0{digits}d}".rstrip("0")) if rest else "")

    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns, 1000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns, 1_000_000)}ms"
    seconds, rest = divmod(ns, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = fraction(seconds * 1_000_000_000 + rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def healthcheck_created_by(hc: Mapping[str, object]) -> str:
    """``HEALTHCHECK %q`` of the config pointer, as released BuildKit writes it:
    ``&{["CMD-SHELL" "..."] "30s" "3s" "0s" "0s" '\\x03'}`` (test, interval, timeout,
    start period, start interval, retries; an unset duration is ``"0s"``)."""
    test = hc.get("Test") or ()
    assert isinstance(test, (list, tuple))
    fields = [go_slice_q(str(t) for t in test)]
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        value = hc.get(key) or 0
        assert isinstance(value, int)
        fields.append(go_quote(go_duration(value)))
    retries = hc.get("Retries") or 0
    assert isinstance(retries, int)
    fields.append(go_quote_rune(retries))
    return "HEALTHCHECK &{" + " ".join(fields) + "}"


def arg_created_by(args: Iterable[tuple[str, str | None]]) -> str:
    """An ARG's entry: each name with the value it took (a --build-arg, its default, the
    global ARG's), or the bare name when it has none."""
    return "ARG " + " ".join(name if value is None else f"{name}={value}"
                             for name, value in args)


def run_args_prefix(declared: Mapping[str, str | None], env: Sequence[str]) -> str:
    """``|N K=V ...`` for a RUN's history: every build arg the stage declared (its base
    stage's first, each name once), valued as the step's environment has it (an ENV of
    the same name wins), else as declared, else empty."""
    if not declared:
        return ""
    image_env = dict(e.partition("=")[::2] for e in env)
    pairs = [f"{k}={image_env.get(k, v or '')}" for k, v in declared.items()]
    return " ".join([f"|{len(pairs)}", *pairs]) + " "
