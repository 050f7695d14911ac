"""Piece-level pushes from the client: v2 after v1 sends only the changed pieces, an
interrupted push resumes without sending pieces again, and a registry without the
extension (CNCF Distribution) gets ordinary uploads."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from aiohttp import web

from cas import Digest
from cas.frames import gzip_member
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.pull import TransferOptions
from registry.client.remote import RegistryClient

from .helpers import make_image, random_bytes, store_image


def versions() -> tuple[Any, Any, int]:
    """v1 and v2 of an image (one 3.2 MB layer of 50 gzip members; v2 changes 3 of them)
    and the bytes of v2's changed members."""
    chunks = [random_bytes(65_536, 7000 + i) for i in range(50)]
    changed = list(chunks)
    for i in (4, 20, 41):
        changed[i] = random_bytes(65_536, 8000 + i)
    old = {gzip_member(c, level=1) for c in chunks}
    changed_bytes = sum(len(m) for m in (gzip_member(c, level=1) for c in changed) if m not in old)
    return make_image([chunks]), make_image([changed]), changed_bytes


async def push(images: ImageStore, client: RegistryClient, ref: str,
               options: TransferOptions | None = None, progress: Progress | None = None) -> Progress:
    progress = progress or Progress("quiet")
    await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images, client,
                     progress, CopyOptions(transfer=options or TransferOptions()))
    return progress


async def test_push_of_v2_sends_only_changed_pieces(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, images2: ImageStore,
    client: RegistryClient,
) -> None:
    v1, v2, changed_bytes = versions()
    proxy, host = await make_proxy(pybuild_registry)
    await store_image(images, f"{host}/app/web:v1", v1)
    first = await push(images, client, f"{host}/app/web:v1")
    assert first.reused == 0 and proxy.request_bytes >= len(v1.layers[0])

    await store_image(images, f"{host}/app/web:v2", v2)
    proxy.request_bytes = 0
    proxy.log.clear()
    lines = io.StringIO()
    progress = await push(images, client, f"{host}/app/web:v2", progress=Progress("plain", lines))
    layer = v2.layers[0]
    # What a user sees: the layer's line says what was sent and what the registry reused.
    line = next(x for x in lines.getvalue().splitlines()
                if x.startswith(Digest.of(layer).encoded[:12]) and "pushed" in x)
    assert re.search(r"pushed \(\d+\.\d KiB transferred, \d+\.\d MiB reused\)", line), line
    assert any(path.endswith("/_pybuild/blob/uploads/") for _, path, _ in proxy.log)
    # The changed members, the plan (three times: start, commit) and config + manifest.
    assert changed_bytes <= proxy.request_bytes <= changed_bytes + 40_000 + len(v2.config) + len(v2.manifest)
    assert progress.reused >= len(layer) - changed_bytes
    assert progress.transferred <= changed_bytes + len(v2.config)

    # Another store pulls exactly what was pushed.
    await copy_image(parse_endpoint(f"{host}/app/web:v2"), parse_endpoint(f"local:{host}/app/web:v2"),
                     images2, client, Progress("quiet"), CopyOptions())
    assert await images2.store.read_bytes(Digest.of(layer)) == layer


async def test_interrupted_piece_push_resumes_without_resending(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
) -> None:
    v1, v2, _ = versions()
    proxy, host = await make_proxy(pybuild_registry)
    await store_image(images, f"{host}/app/web:v1", v1)
    await push(images, client, f"{host}/app/web:v1")
    await store_image(images, f"{host}/app/web:v2", v2)

    sent: list[str] = []
    patches = 0

    def drop(request: web.Request) -> bool:
        nonlocal patches
        listed = request.headers.get("Pybuild-Pieces")
        if request.method != "PATCH" or not listed:
            return False
        patches += 1
        if patches > 1:  # the first batch arrives, every later one breaks off
            return True
        sent.extend(item.split(":")[1] for item in listed.split(","))
        return False

    proxy.drop_request = drop
    small = TransferOptions(part_size=70_000, retries=1)  # one piece per request
    try:
        await push(images, client, f"{host}/app/web:v2", small)
        raise AssertionError("the push should have failed")
    except Exception as exc:
        assert "AssertionError" not in type(exc).__name__
    assert len(sent) == 1
    first_run = list(sent)

    proxy.drop_request = None
    resent: list[str] = []

    def record(request: web.Request) -> bool:
        listed = request.headers.get("Pybuild-Pieces")
        if request.method == "PATCH" and listed:
            resent.extend(item.split(":")[1] for item in listed.split(","))
        return False

    proxy.drop_request = record
    progress = await push(images, client, f"{host}/app/web:v2", small)
    assert resent and not set(resent) & set(first_run)
    assert len(resent) == 2  # three members changed, one arrived before the break
    assert progress.reused >= len(v2.layers[0]) - 3 * 70_000
    layer = v2.layers[0]
    assert await images.store.read_bytes(Digest.of(layer)) == layer


async def test_registry_without_the_extension_gets_ordinary_uploads(
    distribution: str, images: ImageStore, images2: ImageStore, client: RegistryClient,
) -> None:
    v1, v2, _ = versions()
    await store_image(images, f"{distribution}/pieces/fallback:v1", v1)
    await push(images, client, f"{distribution}/pieces/fallback:v1")
    await store_image(images, f"{distribution}/pieces/fallback:v2", v2)
    progress = await push(images, client, f"{distribution}/pieces/fallback:v2")
    # Whole blobs: the new layer went in full.
    assert progress.transferred >= len(v2.layers[0])
    await copy_image(parse_endpoint(f"{distribution}/pieces/fallback:v2"),
                     parse_endpoint("local:copy/of:v2"), images2, client, Progress("quiet"),
                     CopyOptions())
    assert await images2.store.read_bytes(Digest.of(v2.layers[0])) == v2.layers[0]


async def test_copy_from_distribution_to_pybuild_sends_only_changed_pieces(
    distribution: str, pybuild_registry: str, make_proxy: Any, images: ImageStore,
    images2: ImageStore, client: RegistryClient,
) -> None:
    v1, v2, changed_bytes = versions()
    for tag, image in (("v1", v1), ("v2", v2)):
        await store_image(images, f"{distribution}/src/app:{tag}", image)
        await push(images, client, f"{distribution}/src/app:{tag}")
    proxy, host = await make_proxy(pybuild_registry)
    for tag in ("v1", "v2"):
        if tag == "v2":
            proxy.request_bytes = 0
        progress = Progress("quiet")
        await copy_image(parse_endpoint(f"docker://{distribution}/src/app:{tag}"),
                         parse_endpoint(f"docker://{host}/dst/app:{tag}"), images2, client,
                         progress, CopyOptions())
    assert proxy.request_bytes <= changed_bytes + 40_000 + len(v2.config) + len(v2.manifest)
    assert progress.reused >= len(v2.layers[0]) - changed_bytes


async def test_a_copy_shows_the_fetch_before_a_piece_push_and_counts_its_bytes_once(
    distribution: str, pybuild_registry: str, images: ImageStore, images2: ImageStore,
    client: RegistryClient,
) -> None:
    """A blob copied to a registry that takes piece-level pushes is fetched whole into the
    local store first (to cut it): that fetch moves the blob's bar (JSON: ``progress``
    events with ``"phase": "fetch"``), while the totals count only what the push sends.
    Before, a large layer from a slow registry showed nothing until its push began."""
    v1, v2, changed_bytes = versions()
    for tag, image in (("v1", v1), ("v2", v2)):
        await store_image(images, f"{distribution}/src/app:{tag}", image)
        await push(images, client, f"{distribution}/src/app:{tag}")
    await copy_image(parse_endpoint(f"docker://{distribution}/src/app:v1"),
                     parse_endpoint(f"docker://{pybuild_registry}/dst/app:v1"), images2, client,
                     Progress("quiet"), CopyOptions())
    out = io.StringIO()
    progress = Progress("json", out)
    await copy_image(parse_endpoint(f"docker://{distribution}/src/app:v2"),
                     parse_endpoint(f"docker://{pybuild_registry}/dst/app:v2"), images2, client,
                     progress, CopyOptions())
    layer = str(Digest.of(v2.layers[0]))
    events = [e for e in map(json.loads, out.getvalue().splitlines()) if e.get("id") == layer]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds[0] == "start" and kinds[-1] == "done", kinds
    fetch = [e for e in events if e.get("phase") == "fetch"]
    assert fetch and fetch[0]["done"] > 0 and fetch[-1]["done"] <= len(v2.layers[0]), fetch
    assert kinds.index("progress") == events.index(fetch[0])  # the fetch comes first
    assert events[-1]["status"] == "pushed" and events[-1]["bytes"] == len(v2.layers[0])
    assert events[-1]["reused"] >= len(v2.layers[0]) - changed_bytes
    summary = progress.close()
    assert summary["transferred"] <= changed_bytes + 40_000 + len(v2.config)  # not the fetch


async def test_a_plan_over_the_registrys_limits_falls_back_to_an_ordinary_upload(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
    monkeypatch: Any,
) -> None:
    import registry.server.piece_uploads as piece_uploads

    monkeypatch.setattr(piece_uploads, "MAX_PIECES", 3)
    v1, v2, _ = versions()
    proxy, host = await make_proxy(pybuild_registry)
    await store_image(images, f"{host}/app/web:v1", v1)
    await push(images, client, f"{host}/app/web:v1")
    await store_image(images, f"{host}/app/web:v2", v2)
    proxy.request_bytes = 0
    progress = await push(images, client, f"{host}/app/web:v2")
    assert proxy.request_bytes >= len(v2.layers[0])  # whole, after the refused plan
    assert progress.transferred >= len(v2.layers[0])
