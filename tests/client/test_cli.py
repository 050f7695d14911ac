"""The CLI over the client: pull, push, copy, images, rmi, login, logout (CliRunner)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main
from registry.client.image_store import ImageStore

from .conftest import free_port
from .helpers import simple_image, store_image


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("PYBUILD_STORAGE", str(tmp_path / "default-storage"))
    return CliRunner()


def seed(storage: Path, ref: str) -> str:
    async def run() -> str:
        async with await ImageStore.open(storage) as images:
            return str(await store_image(images, ref, simple_image(60, (60_000,))))

    return asyncio.run(run())


def test_push_pull_images_rmi(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    ref = f"{distribution}/cli/{uuid.uuid4().hex[:8]}:v1"
    digest = seed(tmp_path / "a", ref)
    out = runner.invoke(main, ["push", ref, "--storage", str(tmp_path / "a"), "--json"])
    assert out.exit_code == 0, out.output
    events = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = {e["event"] for e in events}
    assert {"start", "done", "summary", "result"} <= kinds
    result = events[-1]
    assert result["digest"] == digest and result["transferred"] > 40_000

    out = runner.invoke(main, ["pull", ref, "--storage", str(tmp_path / "b"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.splitlines()[-1])["digest"] == digest

    out = runner.invoke(main, ["images", "--storage", str(tmp_path / "b"), "--json"])
    listed = json.loads(out.stdout)
    assert [(i["ref"], i["digest"]) for i in listed] == [(ref, digest)]
    table = runner.invoke(main, ["images", "--storage", str(tmp_path / "b")]).output.splitlines()
    # Docker's table: columns as wide as their widest cell plus 3, however long the name.
    width = len(ref) + 3
    assert table[0] == "REFERENCE".ljust(width) + "DIGEST".ljust(15) + "CREATED"
    assert table[1].startswith(ref.ljust(width) + digest.split(":")[1][:12] + "   ")
    assert table[1].endswith(" ago") and table[1] == table[1].rstrip()

    out = runner.invoke(main, ["rmi", ref, "--storage", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert json.loads(runner.invoke(main, ["images", "--storage", str(tmp_path / "b"), "--json"]).stdout) == []
    out = runner.invoke(main, ["rmi", ref, "--storage", str(tmp_path / "b")])
    assert out.exit_code != 0 and "no such local image" in out.output
    gc = runner.invoke(main, ["storage", "gc", "--storage", str(tmp_path / "b"), "--grace", "0"])
    assert gc.exit_code == 0, gc.output


def test_plain_progress_and_copy_to_oci(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    ref = f"{distribution}/cli/{uuid.uuid4().hex[:8]}:v1"
    seed(tmp_path / "a", ref)
    assert runner.invoke(main, ["push", ref, "--storage", str(tmp_path / "a"), "-q"]).exit_code == 0
    out = runner.invoke(main, ["copy", f"docker://{ref}", f"oci:{tmp_path / 'layout'}:v1",
                               "--storage", str(tmp_path / "c")])
    assert out.exit_code == 0, out.output
    assert "pulled" in out.stderr and "transferred" in out.stderr
    assert (tmp_path / "layout" / "index.json").exists()


def test_errors_are_one_clear_line(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    out = runner.invoke(main, ["pull", f"{distribution}/cli/absent:v1", "--storage", str(tmp_path / "s")])
    assert out.exit_code == 1
    assert "MANIFEST_UNKNOWN" in out.output or "NAME_UNKNOWN" in out.output
    assert "Traceback" not in out.output
    out = runner.invoke(main, ["copy", "oci:/nonexistent/x", "local:a", "--storage", str(tmp_path / "s")])
    assert out.exit_code == 1 and "not an OCI layout" in out.output
    out = runner.invoke(main, ["pull", "x/UPPER:y"])
    assert out.exit_code != 0 and "invalid image reference" in out.output


def test_login_and_logout(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    out = runner.invoke(main, ["login", distribution, "-u", "me", "--password-stdin"], input="pw\n")
    assert out.exit_code == 0, out.output
    config = json.loads((tmp_path / "docker" / "config.json").read_text())
    assert distribution in config["auths"]
    out = runner.invoke(main, ["logout", distribution])
    assert out.exit_code == 0, out.output
    assert distribution not in json.loads((tmp_path / "docker" / "config.json").read_text())["auths"]
    # Again: nothing to forget, and no failure (docker logout exits 0 too).
    out = runner.invoke(main, ["logout", distribution])
    assert out.exit_code == 0 and out.output == f"Not logged in to {distribution}\n", out.output


def test_a_failed_command_run_with_json_ends_with_an_error_event_on_stdout(
    runner: CliRunner, tmp_path: Path
) -> None:
    storage = ["--storage", str(tmp_path / "s")]
    for args, code, words in (
        (["pull", "--json", f"127.0.0.1:{free_port()}/x:1"], 1, "cannot connect to registry"),
        (["push", "--json", "nosuch/local:image", "127.0.0.1:1/x:1"], 1, "no local image"),
        (["copy", "--json", "local:x:1", "containers-storage:foo"], 2, "unsupported transport"),
        (["pull", "--jobs", "0", "--json", "x:1"], 2, "--jobs"),
    ):
        out = runner.invoke(main, [*args, *storage])
        assert out.exit_code == code, out.output
        event = json.loads(out.stdout.splitlines()[-1])
        assert event["event"] == "error" and event["exit_code"] == code and words in event["message"]
        assert out.stderr.startswith(f"Error: {event['message']}")
        plain = runner.invoke(main, [a for a in args if a != "--json"] + storage)
        assert plain.exit_code == code and plain.stdout == ""


def test_a_listing_whose_reader_went_away_ends_quietly_as_other_clis_do(tmp_path: Path) -> None:
    seed(tmp_path / "s", "localhost/quiet:1")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "builder", "images", "--storage", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -0` does, before the table is written
    with proc.stderr:
        stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141  # 128 + SIGPIPE
    assert stderr == b""
