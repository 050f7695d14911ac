"""The one duration parser and the one size parser (``cas.units``)."""

from __future__ import annotations

import pytest

from cas.units import parse_duration, parse_size

S = 10**9


@pytest.mark.parametrize(("text", "ns"), [
    # Go's time.ParseDuration (HEALTHCHECK)
    ("0", 0), ("30s", 30 * S), ("1m30s", 90 * S), ("1.5h", 5400 * S), ("10us", 10_000),
    ("10µs", 10_000), ("10μs", 10_000), ("250ms", 250 * 10**6), ("7ns", 7), (".5s", S // 2),
    ("1.s", S), ("1h2m3s4ms5us6ns", 3723 * S + 4_005_006),
    ("512.3us", 512_300),  # exact, as Go: no float rounding below the nanosecond
    ("1.5ns", 1),  # a fraction of a nanosecond is dropped
    # and days, blanks (pybuild builder prune --older-than)
    ("7d", 7 * 86400 * S), ("1.5d", 129600 * S), (" 30m ", 1800 * S), ("30 m", 1800 * S),
    ("1d12h", 36 * 3600 * S),
])
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", [
    "", " ", "30", "1.5", "s", "-1s", "+1s", "5 minutes", "1m 30s", "1w", "1e3s", "1,5s", "ms",
])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "ns"), [
    ("3600", 3600 * S), ("0.5", S // 2), (" 90 ", 90 * S), ("48h", 48 * 3600 * S), ("0", 0),
])
def test_a_bare_number_takes_the_unit_given(text: str, ns: int) -> None:
    assert parse_duration(text, bare_unit="s") == ns


def test_a_bare_number_needs_a_unit_given() -> None:
    with pytest.raises(ValueError):
        parse_duration("3600")
    with pytest.raises(ValueError):
        parse_duration("-1", bare_unit="s")


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("512", 512), ("512b", 512), ("64m", 64 << 20), ("64M", 64 << 20),
    ("64mb", 64 << 20), ("64MiB", 64 << 20), ("1g", 1 << 30), ("1.5k", 1536), ("2t", 2 << 40),
    ("1p", 1 << 50), (" 64 m ", 64 << 20), ("1kib", 1024),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "-1m", "1x", "1e", "1mbb", "1 g b", ".5m", "1,5m"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
