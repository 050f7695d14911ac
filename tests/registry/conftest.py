"""Fixtures for the registry tests: a real app over a real cas store in a temp dir."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.server import ServerConfig, make_app

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    """``await make_client(read_only=True, ...)``: a client for a fresh registry."""

    async def make(storage: Path | None = None, **overrides: Any) -> TestClient:
        config = dataclasses.replace(ServerConfig(), **overrides)
        app = make_app(config, storage=storage or tmp_path / "storage")
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    return await make_client()
