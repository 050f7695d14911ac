"""A request that meets the open-files limit (EMFILE) is answered 503 with Retry-After,
and logged as one line naming the limit and how to raise it, not as a traceback."""

from __future__ import annotations

import errno
import logging
import os

from registry.server.state import REGISTRY

from .helpers import error_codes, push_blob


async def test_out_of_descriptors_is_a_503_and_one_line_naming_the_limit(make_client, caplog, monkeypatch):
    client = await make_client()
    digest = await push_blob(client, "fd/app", b"a blob")
    store = client.server.app[REGISTRY].store

    async def stat(*args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(store, "stat", stat)
    caplog.set_level(logging.ERROR, logger="pybuild.registry")
    resp = await client.get(f"/v2/fd/app/blobs/{digest}")
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert await error_codes(resp) == ["UNAVAILABLE"]
    lines = [r for r in caplog.records if r.name == "pybuild.registry" and r.levelno >= logging.ERROR]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "too many open files" in lines[0].getMessage() and "ulimit -n" in lines[0].getMessage()
