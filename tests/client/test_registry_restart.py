"""A registry that restarts in the middle of a push: the client waits for it (a growing
backoff over a bounded time, a line per retry) and the push completes, as ``docker push``
rides out a restart; a registry never reached still fails at once
(``tests/client/test_unreachable.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import Digest
from registry.client.image_store import ImageStore
from registry.client.refusals import Refusals
from testkit.registries import RegistryProcess, _python_env, free_port, pybuild_argv

from .helpers import make_image, random_bytes, store_image

ROOT = Path(__file__).resolve().parents[2]


def _pybuild(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "builder", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_python_env(ROOT))


def _through_a_restart(process: RegistryProcess, *args: str) -> list[dict[str, object]]:
    """``pybuild ARGS --json``, whose registry is killed once bytes flow and started again
    3 s later; it must succeed, having said that it retries. Its events."""
    client = _pybuild(*args, "--json")
    assert client.stdout is not None and process.pid is not None
    events = []
    for line in client.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress" and 0 < events[-1]["done"] < events[-1]["total"]:
            break
    assert events[-1]["event"] == "progress", events
    # the client holds still while the registry dies, so it meets the outage mid-transfer
    os.kill(client.pid, signal.SIGSTOP)
    os.kill(process.pid, signal.SIGKILL)
    process.stop()
    os.kill(client.pid, signal.SIGCONT)
    time.sleep(3)  # down for a while: the client must keep asking, not give up
    process.start()
    rest, err = client.communicate(timeout=120)
    assert client.returncode == 0, (err, process.log_tail())
    events += [json.loads(line) for line in rest.splitlines()]
    told = [e["text"] for e in events if e["event"] == "message"]
    assert any(str(t).startswith(f"cannot connect to {process.addr} (connection refused): "
                                 "retrying in ") for t in told), told
    return events


@pytest.mark.slow
def test_a_push_and_a_pull_ride_out_a_registry_restart(tmp_path: Path) -> None:
    # layers over the 16 MiB upload chunk: each goes in PATCHes, so the registry goes
    # down between (or in the middle of) the requests of one blob
    image = make_image([[random_bytes(1 << 20, seed * 100 + j) for j in range(20)]
                        for seed in range(3)])
    port = free_port()
    ref = f"127.0.0.1:{port}/team/app:1"

    async def seed() -> None:
        async with await ImageStore.open(tmp_path / "local") as images:
            await store_image(images, ref, image)

    asyncio.run(seed())
    process = RegistryProcess("pybuild", pybuild_argv(tmp_path / "registry"),
                              storage=tmp_path / "registry", log=tmp_path / "registry.log",
                              env=_python_env(ROOT), port=port)
    process.start()
    try:
        events = _through_a_restart(process, "push", "--storage", str(tmp_path / "local"), ref)
        assert {e["id"] for e in events if e["event"] == "done"} >= \
            image.blob_digests() - {str(Digest.of(image.config))}
        _through_a_restart(process, "pull", "--storage", str(tmp_path / "pulled"), ref)

        async def check() -> None:
            async with await ImageStore.open(tmp_path / "pulled") as images:
                found = await images.resolve(ref)
                assert found is not None and found.digest == image.digest
                for blob in (image.config, *image.layers):
                    assert await images.store.read_bytes(Digest.of(blob)) == blob

        asyncio.run(check())
    finally:
        process.stop()


def test_the_wait_for_a_restarting_host_is_bounded_and_told_once_per_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[str] = []
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    refusals = Refusals(backoff=0.25, outage=30, notice=told.append)
    # a host never reached: two quick retries, then no more
    assert [refusals.delay("new:1", a, False, "connection refused") for a in range(3)] == \
        [0.25, 0.5, None]
    waited = []
    for attempt in range(20):
        # two requests meet the same outage: one line per round
        delay = refusals.delay("reg:5000", attempt, True, "connection refused")
        assert refusals.delay("reg:5000", attempt, True, "connection refused") == delay
        if delay is None:
            break
        waited.append(delay)
        clock[0] += delay
    assert waited[:6] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]  # growing, then 5 s apart
    assert sum(waited) == 30
    assert len(told) == len(waited)
    assert told[0] == ("cannot connect to reg:5000 (connection refused): retrying in 0.25 s "
                       "(refusing for 0 s; giving up after 30 s)")
    assert refusals.gave_up("reg:5000") == \
        " (it answered earlier, then refused connections for 30 s)"
    # once it answers, a later outage gets the whole time again
    refusals.answered("reg:5000")
    assert refusals.delay("reg:5000", 0, True, "connection refused") == 0.25
    # outage 0: a host that answered before is no different
    quick = Refusals(backoff=0.25, outage=0, notice=told.append)
    assert [quick.delay("reg:5000", a, True, "x") for a in range(3)] == [0.25, 0.5, None]
