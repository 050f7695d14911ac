"""ARG/ENV scoping, expansion and the stage graph, driven by testfiles-stages/<case>/:
Dockerfile + case.json (build args, target, platforms, the ENV and ONBUILD triggers of
base images) -> expected.json, and
testfiles-stages-negative/<case>/ -> error.txt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.dockerfile.errors import DockerfileError
from builder.dockerfile.parse_cmd import plan_to_json
from builder.dockerfile.signals import check_signal
from builder.dockerfile.stages import BuildPlan, parse_ports, plan_build
from builder.dockerfile.syntax import parse
from registry.oci import Platform

HERE = Path(__file__).parent
POSITIVE = sorted(p.name for p in (HERE / "testfiles-stages").iterdir() if p.is_dir())
NEGATIVE = sorted(p.name for p in (HERE / "testfiles-stages-negative").iterdir()
                  if p.is_dir())


def run_case(folder: Path) -> BuildPlan:
    case: dict[str, Any] = json.loads((folder / "case.json").read_text())
    text = (folder / "Dockerfile").read_bytes().decode("utf-8")
    tp = case.get("target_platform")
    return plan_build(
        parse(text), case.get("build_args", {}), case.get("target"),
        build_platform=Platform.parse(case.get("build_platform", "linux/amd64")),
        target_platform=Platform.parse(tp) if tp else None,
        image_env=case.get("image_env"), image_onbuild=case.get("image_onbuild"),
    )


@pytest.mark.parametrize("case", POSITIVE)
def test_stages(case: str) -> None:
    folder = HERE / "testfiles-stages" / case
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    assert plan_to_json(run_case(folder)) == expected


@pytest.mark.parametrize("case", NEGATIVE)
def test_stages_negative(case: str) -> None:
    folder = HERE / "testfiles-stages-negative" / case
    wanted = (folder / "error.txt").read_text(encoding="utf-8").rstrip("\n")
    with pytest.raises(DockerfileError) as info:
        run_case(folder)
    assert wanted in str(info.value)


def test_reference_user_example() -> None:
    plan = run_case(HERE / "testfiles-stages" / "reference-user")
    users = [i.to_json()["user"] for i in plan.stages[0].instructions
             if i.to_json()["instruction"] == "USER"]
    assert users == ["some_user", "what_user"]


@pytest.mark.parametrize("spec,ports", [
    ("80", ["80/tcp"]), ("80/UDP", ["80/udp"]), ("8000-8002/tcp", ["8000/tcp", "8001/tcp",
                                                                   "8002/tcp"]),
    ("127.0.0.1:8080:80", ["80/tcp"]), ("53/sctp", ["53/sctp"]),
])
def test_parse_ports(spec: str, ports: list[str]) -> None:
    assert parse_ports(spec) == ports


@pytest.mark.parametrize("spec", ["http", "80/icmp", "90-80", "70000", ""])
def test_parse_ports_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_ports(spec)


@pytest.mark.parametrize("value", ["SIGTERM", "term", "9", "-9", "+15", "99", "SIGRTMIN+3",
                                   "RTMAX-14", "SIGCLD", "sigkill"])
def test_stop_signals_buildkit_accepts(value: str) -> None:
    check_signal(value)


@pytest.mark.parametrize("value", ["", "0", "FOO", "SIGFOO", "9x", " 9", "SIGUNUSED",
                                   "SIGSIGTERM", "RTMIN+16", "٩"])
def test_stop_signals_buildkit_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="invalid signal"):
        check_signal(value)
