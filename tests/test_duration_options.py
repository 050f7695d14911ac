"""Every command-line option that takes a time span reads one syntax (``cas.units
.parse_seconds``: ``90s``, ``30m``, ``1h30m``, ``48h``, ``7d``, or bare seconds) and refuses
anything else with one message that shows the expected form."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main

# (command, option) for every option whose value is a time span
SPANS = [
    (["storage", "gc"], "--grace"),
    (["storage", "gc"], "--ingest-ttl"),
    (["builder", "prune"], "--older-than"),
    (["builder", "prune"], "--wait"),
    (["storage", "retention"], "--untagged-delay"),
    (["storage", "retention"], "--upload-grace"),
]


@pytest.mark.parametrize(("command", "option"), SPANS)
@pytest.mark.parametrize("value", ["soon", "-5", "-1h", "nan", "1w", "5 minutes"])
def test_a_time_span_option_refuses_what_is_no_duration(tmp_path: Path, command: list[str],
                                                         option: str, value: str) -> None:
    got = CliRunner().invoke(main, [*command, "--storage", str(tmp_path), option, value])
    assert got.exit_code == 2, got.output
    assert (f"Invalid value for '{option}': {value!r} is not a duration such as 90s, 30m, "
            "48h or 7d (a bare number is seconds)") in got.output
    assert "Traceback" not in got.output


@pytest.mark.parametrize(("command", "option"), [s for s in SPANS if s[0][0] != "storage"
                                                 or s[0][1] == "gc"])
@pytest.mark.parametrize("value", ["0s", "0", "90", "1h30m", "7d", "1.5h", "7d12h"])
def test_a_time_span_option_takes_any_duration(tmp_path: Path, command: list[str], option: str,
                                               value: str) -> None:
    got = CliRunner().invoke(main, [*command, "--storage", str(tmp_path), option, value])
    assert got.exit_code == 0, got.output


@pytest.mark.parametrize("value", ["1h30m", "1.5h", "2d", "3600", "4w", "1w2d", "7d12h"])
def test_a_robots_lifetime_takes_any_duration_and_weeks(tmp_path: Path, value: str) -> None:
    args = ["robot", "create", "ci", "--scope", "repository:app:pull",
            "--storage", str(tmp_path), "--expires", value]
    got = CliRunner().invoke(main, args)
    assert got.exit_code == 0, got.output


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "'soon' is not a duration such as 90s, 30m, 48h or 7d (a bare number is seconds); "
             "or weeks: 4w"),
    ("0s", "'0s': a robot's lifetime must be more than 0"),
])
def test_a_robots_lifetime_refuses_what_is_no_lifetime(tmp_path: Path, value: str,
                                                       message: str) -> None:
    args = ["robot", "create", "ci", "--scope", "repository:app:pull",
            "--storage", str(tmp_path), "--expires", value]
    got = CliRunner().invoke(main, args)
    assert got.exit_code == 2 and f"Invalid value for '--expires': {message}" in got.output


def test_a_prune_until_filter_reads_the_same_durations(tmp_path: Path) -> None:
    args = ["builder", "prune", "--storage", str(tmp_path), "--filter"]
    assert CliRunner().invoke(main, [*args, "until=1h30m"]).exit_code == 0
    got = CliRunner().invoke(main, [*args, "until=soon"])
    assert got.exit_code == 2
    assert ("Invalid value for '--filter': 'soon' is not a duration such as 90s, 30m, 48h or "
            "7d (a bare number is seconds)") in got.output


@pytest.mark.parametrize(("value", "seconds"), [("7d12h", 648000.0), ("12h7d", 648000.0),
                                                ("1.5d", 129600.0), ("7d", 604800.0),
                                                ("90", 90.0), (3600, 3600.0), ("30s", 30.0)])
def test_a_retention_rule_reads_the_same_durations(value: object, seconds: float) -> None:
    from registry.server.retention_policy import parse_retention_duration

    assert parse_retention_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-1d", "", "1w"])
def test_a_retention_rule_refuses_what_is_no_duration(value: str) -> None:
    from registry.server.retention_policy import parse_retention_duration

    with pytest.raises(ValueError, match="expected a duration such as 30s"):
        parse_retention_duration(value)
