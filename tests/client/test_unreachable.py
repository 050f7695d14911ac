"""A registry that cannot be reached: one line naming the host and what to check, after
few connection attempts (a closed port) or one (a name that does not resolve)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from builder.cli import main
from registry.client.image_store import ImageStore
from registry.client.refs import parse_image_ref
from registry.client.remote import ClientOptions, RegistryClient, TransportError

from .conftest import free_port
from .helpers import simple_image, store_image

UNRESOLVABLE = "nonexistent.invalid"  # RFC 6761: never resolves


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the client's TCP connection attempts (name resolutions included) by host."""
    seen: Counter[str] = Counter()
    real = socket.create_connection

    def counting(address: tuple[str, int], *args: Any, **kw: Any) -> socket.socket:
        seen[address[0] if address[0] == UNRESOLVABLE else f"{address[0]}:{address[1]}"] += 1
        return real(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", counting)
    return seen


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return CliRunner()


def seed(storage: Path, ref: str) -> None:
    async def run() -> None:
        async with await ImageStore.open(storage) as images:
            await store_image(images, ref, simple_image(5, (20_000,) * 16))

    asyncio.run(run())


def run_cli(runner: CliRunner, tmp_path: Path, command: str, ref: str) -> tuple[str, float]:
    """``pybuild COMMAND REF -j 16``, which must fail with one line: that line, and how
    long it took."""
    if command == "push":
        seed(tmp_path / "store", ref)
    start = time.monotonic()
    out = runner.invoke(main, [command, ref, "-j", "16", "--storage", str(tmp_path / "store")])
    took = time.monotonic() - start
    assert out.exit_code == 1, out.output
    assert "Traceback" not in out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    assert "/v2/" not in lines[0] and "attempts" not in lines[0]
    return lines[0], took


@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_closed_port_is_named_once_with_what_to_check(
    runner: CliRunner, tmp_path: Path, connects: Counter[str], command: str,
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    line, took = run_cli(runner, tmp_path, command, f"{host}/down/app:v1")
    assert line == (f"Error: cannot connect to registry {host} (connection refused): is the "
                    f"registry running, and is {host} its address and port?")
    # HTTPS first (loopback), then HTTP with two quick retries: not once per blob.
    assert connects[host] <= 4, connects
    assert took < 10


@pytest.mark.parametrize("command", ["pull", "push"])
@pytest.mark.parametrize("port", ["", ":5000"])
def test_a_name_that_does_not_resolve_is_not_retried(
    runner: CliRunner, tmp_path: Path, connects: Counter[str], command: str, port: str,
) -> None:
    line, took = run_cli(runner, tmp_path, command, f"{UNRESOLVABLE}{port}/app:v1")
    assert line.startswith(f"Error: registry host {UNRESOLVABLE} is unknown (")
    assert line.endswith("check the registry's host name, and the DNS set-up")
    assert connects[UNRESOLVABLE] == 1, connects
    assert took < 10


@pytest.fixture
def blackhole() -> Any:
    """host:port of a socket that takes connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"127.0.0.1:{server.getsockname()[1]}"


async def test_a_registry_that_never_answers_is_reported_while_waiting_and_named_once(blackhole: str) -> None:
    told: list[str] = []
    options = ClientOptions(retries=1, backoff=0.01, read_timeout=0.6, notice=told.append, notice_after=0.25)
    async with RegistryClient(options) as client:
        with pytest.raises(TransportError) as failure:
            await client.get_manifest(parse_image_ref(f"{blackhole}/x:1"))
    message = str(failure.value)
    assert message.count("GET http://") == 1, message
    assert message.startswith(f"GET http://{blackhole}/v2/x/manifests/1: timed out (after 2 attempts)")
    assert any(t.startswith(f"waiting for {blackhole} (no answer for ") for t in told), told
    assert f"waiting for {blackhole} (no answer in 0.6 s; retrying, attempt 2 of 2)" in told


@pytest.mark.parametrize("json_events", [True, False])
def test_sigterm_stops_a_pull_with_143_and_one_line(tmp_path: Path, json_events: bool) -> None:
    """A CI runner cancels a job with SIGTERM: the pull stops as Ctrl-C stops it, says so
    in one line (``--json``: an error event) and exits 143, as ``pybuild build`` does,
    instead of dying by the signal with nothing said."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as listener:  # takes connections and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(60)
        port = listener.getsockname()[1]
        argv = [sys.executable, "-m", "builder", "pull", "--storage", str(tmp_path / "s"),
                *(["--json"] if json_events else []), f"127.0.0.1:{port}/app:1"]
        proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYBUILD_NO_FASTPATH": "1"})
        try:
            conn, _ = listener.accept()  # the pull is waiting for an answer now
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            conn.close()
        finally:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.decode().splitlines() == ["Error: interrupted by SIGTERM: the transfer stopped"]
    if json_events:
        assert json.loads(out.decode().splitlines()[-1]) == {
            "event": "error", "message": "interrupted by SIGTERM: the transfer stopped",
            "exit_code": 143}
