"""Basic auth: timing that does not tell who exists, one bcrypt run per login, the
htpasswd file re-read when it changes."""

from __future__ import annotations

import asyncio
import base64
import logging
import statistics
import time
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import RegistryError
from registry.server import auth as auth_module

from .helpers import error_codes


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _entry(user: str, password: str, cost: int = 4) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()}\n"


async def _median_seconds(client, user: str, tries: int) -> float:
    times = []
    for i in range(tries):
        started = time.perf_counter()
        resp = await client.get("/v2/", headers=_basic(user, f"wrong-{i}"))
        times.append(time.perf_counter() - started)
        assert resp.status == 401
    return statistics.median(times)


async def test_unknown_and_known_users_take_as_long(make_client, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(_entry("alice", "s3cret", cost=8) + _entry("carol", "pw", cost=8))
    client = await make_client(auth_htpasswd=htpasswd)
    await _median_seconds(client, "alice", 1)  # warm up
    # Interleaved rounds, so that a busy machine slows both sides alike.
    known_times, unknown_times = [], []
    for _ in range(5):
        known_times.append(await _median_seconds(client, "alice", 3))
        unknown_times.append(await _median_seconds(client, "mallory", 3))
    known, unknown = statistics.median(known_times), statistics.median(unknown_times)
    # Cost 8 is ~16 ms a check; an unanswered lookup would be well under 1 ms.
    assert 0.4 < unknown / known < 2.5, (unknown, known)


async def test_one_bcrypt_run_per_login(make_client, tmp_path, monkeypatch):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(_entry("alice", "s3cret", cost=6))
    client = await make_client(auth_htpasswd=htpasswd)
    calls = []
    checkpw = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    # A push starts with several requests at once: they share one check.
    answers = await asyncio.gather(
        *(client.get("/v2/", headers=_basic("alice", "s3cret")) for _ in range(6))
    )
    assert [r.status for r in answers] == [200] * 6
    assert len(calls) == 1
    for _ in range(5):
        assert (await client.get("/v2/", headers=_basic("alice", "s3cret"))).status == 200
    assert len(calls) == 1  # remembered
    assert (await client.get("/v2/", headers=_basic("alice", "wrong"))).status == 401
    assert len(calls) == 2  # failures are not remembered


async def test_the_login_cache_is_bounded_and_dropped_with_the_users(monkeypatch):
    monkeypatch.setattr(auth_module, "CACHE_ENTRIES", 4)
    users = {f"u{i}": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)) for i in range(6)}
    basic = auth_module.BasicAuth(users, "r")
    for i in range(6):
        assert await basic.authenticate(_basic(f"u{i}", "pw")["Authorization"]) == f"u{i}"
    assert len(basic._ok) == 4
    basic.use(auth_module.Htpasswd.of({}))
    assert len(basic._ok) == 0
    with pytest.raises(RegistryError) as info:
        await basic.authenticate(_basic("u5", "pw")["Authorization"])
    assert info.value.status == 401


async def _until_status(client, headers: dict[str, str], status: int, seconds: float = 8) -> int:
    deadline = time.monotonic() + seconds
    got = -1
    for _ in range(200):
        got = (await client.get("/v2/", headers=headers)).status
        if got == status or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return got


async def test_htpasswd_is_reread_when_it_changes(make_client, tmp_path, caplog):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(_entry("alice", "s3cret"))
    client = await make_client(auth_htpasswd=htpasswd)
    assert (await client.get("/v2/", headers=_basic("alice", "s3cret"))).status == 200
    bob = await client.get("/v2/", headers=_basic("bob", "hunter2"))
    assert bob.status == 401 and await error_codes(bob) == ["UNAUTHORIZED"]

    htpasswd.write_text(_entry("alice", "n3w") + _entry("bob", "hunter2"))
    assert await _until_status(client, _basic("bob", "hunter2"), 200) == 200
    # The old password was remembered: a reload forgets it.
    assert (await client.get("/v2/", headers=_basic("alice", "s3cret"))).status == 401

    with caplog.at_level(logging.ERROR, logger="pybuild.registry"):
        htpasswd.write_text("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
        deadline = time.monotonic() + 8
        while "not reloaded" not in caplog.text and time.monotonic() < deadline:
            await client.get("/v2/", headers=_basic("bob", "hunter2"))
            await asyncio.sleep(0.1)
    assert "not reloaded" in caplog.text and "bcrypt" in caplog.text
    # A file that does not parse leaves the users as they were.
    assert (await client.get("/v2/", headers=_basic("bob", "hunter2"))).status == 200
    assert (await client.get("/v2/", headers=_basic("alice", "n3w"))).status == 200


def test_htpasswd_cost_is_checked(tmp_path: Path):
    path = tmp_path / "htpasswd"
    path.write_text("eve:$2b$99$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n")
    with pytest.raises(ValueError, match="bcrypt"):
        auth_module.load_htpasswd(path)


_TABLE = auth_module.Htpasswd.of({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))})


@settings(max_examples=200, deadline=None)
@given(
    header=st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80).map(lambda b: "Basic " + base64.b64encode(b).decode()),
        st.binary(max_size=80).map(lambda b: "Basic " + b.decode("latin-1")),
        st.builds(
            lambda u, p: "basic " + base64.b64encode(u.encode() + b":" + p).decode(),
            st.text(max_size=20), st.binary(max_size=100),
        ),
    )
)
def test_any_authorization_header_is_a_401_or_a_user(header):
    async def check() -> None:
        basic = auth_module.BasicAuth(_TABLE, "r")
        try:
            assert await basic.authenticate(header) == "alice"
        except RegistryError as exc:
            assert exc.status == 401 and exc.headers["WWW-Authenticate"] == 'Basic realm="r"'

    asyncio.run(check())
