"""What ``pybuild pull``, ``push``, ``copy`` and ``images`` import when they run for real
with nothing to transfer (a CI job's pull of an image it already holds): the modules only
other paths need (archives, the chunker, the server, scratch files) stay unimported.
Structural: which modules, never how long they took."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from registry.client.image_store import ImageStore

from ..test_startup_imports import run_importing
from .helpers import simple_image, store_image

# Needed by other paths only: tar archives (docker-archive:, oci-archive:), the chunker of
# blobs longer than a piece, scratch directories, the registry server, the builder.
NOT_FOR_A_TRANSFER = {"tarfile", "pyfastcdc", "tempfile", "shutil", "secrets",
                      "aiohttp", "registry.server", "builder.build", "yaml", "jwt"}


def test_a_pull_and_a_push_with_nothing_to_transfer(distribution: str, tmp_path: Path) -> None:
    ref = f"{distribution}/startup/{uuid.uuid4().hex[:8]}:v1"

    async def seed() -> str:
        async with await ImageStore.open(tmp_path / "a") as images:
            return str(await store_image(images, ref, simple_image(7, (60_000,))))

    digest = asyncio.run(seed())
    for command, storage in (("push", "a"), ("pull", "b")):
        for _ in range(2):  # the second has nothing to transfer
            out, modules = run_importing(command, "-q", "--storage", str(tmp_path / storage), ref)
            assert out.returncode == 0, out.stderr[-2000:]
        assert {"registry.client.copy", "http.client"} <= modules  # it did run
        assert not modules & NOT_FOR_A_TRANSFER, (command, sorted(modules & NOT_FOR_A_TRANSFER))

    out, modules = run_importing("copy", "-q", f"docker://{ref}", f"oci:{tmp_path / 'layout'}:v1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "layout" / "index.json").is_file()
    assert not modules & NOT_FOR_A_TRANSFER, sorted(modules & NOT_FOR_A_TRANSFER)

    # images only reads the store: no HTTP client
    out, modules = run_importing("images", "--storage", str(tmp_path / "b"))
    assert out.returncode == 0 and digest.split(":")[1][:12] in out.stdout, out.stderr[-2000:]
    assert not modules & (NOT_FOR_A_TRANSFER | {"http.client"}), \
        sorted(modules & (NOT_FOR_A_TRANSFER | {"http.client"}))
