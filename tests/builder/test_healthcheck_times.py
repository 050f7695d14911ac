"""HEALTHCHECK times are read as BuildKit reads them: Go's ``time.ParseDuration``, then 0
or at least 1ms (a negative time is too short), and no more than Go's int64 nanoseconds,
the most Docker can load from an image config; --retries as a 32-bit number, and shown
in the history as Go shows it."""

from __future__ import annotations

import pytest

from builder.dockerfile.errors import DockerfileError
from builder.dockerfile.instruction_parsers import parse_dockerfile
from builder.dockerfile.instructions import Healthcheck
from builder.dockerfile.syntax import parse
from builder.steps.history import healthcheck_created_by


def _interval(value: str) -> int:
    (_, check) = parse_dockerfile(parse(f"FROM a\nHEALTHCHECK --interval={value} CMD true\n"))
    assert isinstance(check, Healthcheck)
    return check.interval


@pytest.mark.parametrize("value,ns", [
    ("+2s", 2 * 10**9), ("1.s", 10**9), (".5s", 5 * 10**8), ("0", 0), ("-0s", 0),
    ("1h2m3.5s", 3723500 * 10**6), ("1000us", 10**6), ("1µs1ms", 1001 * 10**3),
    ("2562047h47m16.854775807s", 2**63 - 1),
])
def test_times_go_accepts(value: str, ns: int) -> None:
    assert _interval(value) == ns


@pytest.mark.parametrize("value,expected", [
    ("2562047h47m16.854775808s", "a duration"), ("9999999h", "a duration"),
    ("1d", "a duration"), ("5", "a duration"), ("1S", "a duration"), ("++1s", "a duration"),
    ("-1s", "0 or at least 1ms"), ("0.5ms", "0 or at least 1ms"),
])
def test_times_go_rejects(value: str, expected: str) -> None:
    with pytest.raises(DockerfileError, match=f"for --interval of HEALTHCHECK: expected {expected}"):
        _interval(value)


def _retries(value: str) -> int:
    (_, check) = parse_dockerfile(parse(f"FROM a\nHEALTHCHECK --retries={value} CMD true\n"))
    assert isinstance(check, Healthcheck)
    return check.retries


@pytest.mark.parametrize("value,retries", [("3", 3), ("+3", 3), ("03", 3),
                                           ("2147483647", 2**31 - 1)])
def test_retries_buildkit_accepts(value: str, retries: int) -> None:
    assert _retries(value) == retries


@pytest.mark.parametrize("value", ["2147483648", "99999999999999999999", "1_0", "٣", "3.0"])
def test_retries_buildkit_rejects(value: str) -> None:
    # BuildKit reads --retries with strconv.ParseInt(value, 10, 32)
    with pytest.raises(DockerfileError, match="for --retries of HEALTHCHECK: expected a whole "
                                              "number below 2147483648"):
        _retries(value)


@pytest.mark.parametrize("retries,shown", [(3, "'\\x03'"), (65, "'A'"), (0xD800, "'\ufffd'"),
                                           (0x110000, "'\ufffd'"), (2**31 - 1, "'\ufffd'")])
def test_retries_in_history_as_go_quotes_them(retries: int, shown: str) -> None:
    # Go's %q of an int that is no code point is U+FFFD (pybuild crashed on them)
    text = healthcheck_created_by({"Test": ["CMD-SHELL", "true"], "Retries": retries})
    assert text == f'HEALTHCHECK &{{["CMD-SHELL" "true"] "0s" "0s" "0s" "0s" {shown}}}'
