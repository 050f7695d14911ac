"""Distribution's ``health.file`` (registry/server/health.py): while the file exists, every
request is answered 503 ``UNAVAILABLE`` (before authentication); once it is gone, the
registry serves again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from registry.server.config import ConfigError, load_config
from registry.server.health import FileCheck, StorageCheck

from .helpers import error_codes


async def _status_becomes(client, status: int, seconds: float = 8) -> int:
    deadline = time.monotonic() + seconds
    while True:
        got = (await client.get("/v2/")).status
        if got == status or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_a_present_file_takes_the_registry_out(make_client, tmp_path: Path) -> None:
    down = tmp_path / "down"
    down.touch()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    client = await make_client(health_file=(FileCheck(down, 0.05),), auth_htpasswd=htpasswd)
    out = await client.get("/v2/")  # no credentials: 503 all the same, as in Distribution
    assert out.status == 503 and await error_codes(out) == ["UNAVAILABLE"]
    blob = await client.get("/v2/lib/app/blobs/sha256:" + "0" * 64)
    assert blob.status == 503
    down.unlink()
    assert await _status_becomes(client, 401) == 401
    down.touch()
    assert await _status_becomes(client, 503) == 503


def test_health_file_is_read_from_a_distribution_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nhealth:\n  storagedriver: {enabled: true, interval: 10s, threshold: 3}\n"
                    "  file:\n    - file: /srv/registry/down\n      interval: 5s\n    - file: /srv/b\n")
    config = load_config(path, environ={})
    assert config.health_file == (FileCheck(Path("/srv/registry/down"), 5.0), FileCheck(Path("/srv/b"), 10.0))


@pytest.mark.parametrize(("entry", "message"), [
    ("[{interval: 5s}]", r"health\.file\[0\]: expected \{file: PATH"),
    ("[{file: /d, threshold: 3}]", r"health\.file\[0\]: unknown key\(s\) threshold"),
    ("[{file: /d, interval: soon}]", r"expected a duration"),
])
def test_a_bad_file_check_is_an_error(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(f"version: 0.1\nhealth: {{file: {entry}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_health_file_from_pybuilds_environment() -> None:
    config = load_config(None, environ={"PYBUILD_HEALTH_FILE": "[{file: /srv/down, interval: 2s}]"})
    assert config.health_file == (FileCheck(Path("/srv/down"), 2.0),)


async def test_debug_health_lists_the_failing_checks_as_distribution(aiohttp_client, tmp_path: Path) -> None:
    from registry.server import ServerConfig, make_app
    from registry.server.debug import make_debug_app

    down = tmp_path / "down"
    config = ServerConfig(health_file=(FileCheck(down, 0.05),))
    app = make_app(config, storage=tmp_path / "storage")
    await aiohttp_client(app)
    debug = await aiohttp_client(make_debug_app(app, config))
    ok = await debug.get("/debug/health")
    assert ok.status == 200 and await ok.json() == {}
    down.touch()
    for _ in range(160):
        out = await debug.get("/debug/health")
        if out.status == 503:
            break
        await asyncio.sleep(0.05)
    assert out.status == 503 and await out.json() == {str(down): "file exists"}


async def test_a_storage_that_does_not_answer_takes_the_registry_out(
        aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Distribution's health.storagedriver: after `threshold` failed checks in a row every
    # request, /v2/ too, is 503 UNAVAILABLE, so a load balancer checking /v2/ takes the
    # replica out; the first check that passes brings it back.
    from registry.server import ServerConfig, make_app
    from registry.server.debug import make_debug_app
    from registry.server.health import StorageCheck
    from registry.server.state import REGISTRY

    config = ServerConfig(health_storagedriver=StorageCheck(0.05, 2))
    app = make_app(config, storage=tmp_path / "storage")
    client = await aiohttp_client(app)
    debug = await aiohttp_client(make_debug_app(app, config))
    assert (await client.get("/v2/")).status == 200
    meta = type(app[REGISTRY].meta)
    answer = meta.repository_exists

    async def down(self: object, name: str) -> bool:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(meta, "repository_exists", down)
    assert await _status_becomes(client, 503) == 503
    out = await client.get("/v2/")
    assert await error_codes(out) == ["UNAVAILABLE"] and out.headers["Retry-After"] == "10"
    health = await debug.get("/debug/health")
    assert health.status == 503
    assert (await health.json())["storagedriver"] == "the metadata database does not answer: connection refused"
    monkeypatch.setattr(meta, "repository_exists", answer)
    assert await _status_becomes(client, 200) == 200


@pytest.mark.parametrize(("text", "expected"), [
    ("{enabled: true, interval: 10s, threshold: 3}", StorageCheck(10.0, 3)),
    ("{enabled: true}", StorageCheck(10.0, 0)),
    ("{enabled: false, interval: 1s}", None),
])
def test_health_storagedriver_is_read_as_distribution_reads_it(tmp_path: Path, text: str, expected) -> None:
    path = tmp_path / "config.yml"
    path.write_text(f"version: 0.1\nhealth:\n  storagedriver: {text}\n")
    assert load_config(path, environ={}).health_storagedriver == expected


@pytest.mark.parametrize(("text", "message"), [
    ("{enabled: 'true'}", r"enabled must be true or false"),
    ("{enabled: true, threshold: -1}", r"threshold must be a whole number"),
    ("{enabled: true, every: 1s}", r"unknown key\(s\) every"),
])
def test_a_bad_storagedriver_check_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(f"version: 0.1\nhealth:\n  storagedriver: {text}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})
