"""Interrupted, corrupted and truncated transfers: resumed or refused, the store stays sound."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.pull import BlobError, TransferOptions
from registry.client.pull_sink import _Sink
from registry.client.refs import parse_image_ref
from registry.client.remote import ClientOptions, RegistryClient, TransportError

from .helpers import SampleImage, make_image, random_bytes, simple_image, store_image

SMALL_PARTS = TransferOptions(part_size=64 << 10, checkpoint_every=64 << 10, checkpoint_interval=0,
                              retries=2,
                              upload_chunk=128 << 10)


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient):
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions(transfer=SMALL_PARTS))


async def publish(host: str, repo: str, image: SampleImage, tmp_path: Path, client: RegistryClient) -> str:
    ref = f"{host}/{repo}:v1"
    async with await ImageStore.open(tmp_path / "publisher") as images:
        await store_image(images, ref, image)
        await copy(f"local:{ref}", ref, images, client)
    return ref


def position(request: web.Request, sent: int) -> int:
    """Where in the blob the byte about to be sent sits (Range requests start later)."""
    return int(request.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0]) + sent


async def published(host: str, repo: str, seed: int, tmp_path: Path, client: RegistryClient) -> SampleImage:
    """A one-layer image (300 kB) published in ``repo``."""
    image = simple_image(seed, (300_000,))
    await publish(host, repo, image, tmp_path, client)
    return image


def big_layer(image: SampleImage) -> tuple[Digest, int]:
    layer = max(image.layers, key=len)
    return Digest.of(layer), len(layer)


async def test_dropped_connection_is_resumed_in_process(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    image = simple_image(20, (1_000_000,))
    await publish(registry_host, "faults/once", image, tmp_path, client)
    digest, size = big_layer(image)
    dropped = []

    def fault(request: web.Request, sent: int, chunk: bytes) -> bytes | None:
        if digest.encoded in request.path and position(request, sent) >= 400_000 and not dropped:
            dropped.append(sent)
            return None
        return chunk

    proxy, host = await make_proxy(registry_host, fault=fault)
    result = await copy(f"{host}/faults/once:v1", f"local:{host}/faults/once:v1", images, client)
    assert dropped and result.digest == image.digest
    assert await images.store.read_bytes(digest) == max(image.layers, key=len)
    ranges = [r for m, p, r in proxy.log if m == "GET" and digest.encoded in p and r]
    assert ranges, "the retry must ask for the rest with Range"
    # Resumed, not restarted: the retry started where the received bytes ended.
    starts = [int(r.split("=")[1].split("-")[0]) for r in ranges]
    assert max(starts) > 0 and len(starts) == len(set(starts)), "no range was asked for twice"
    assert proxy.blob_bytes < 2 * size
    assert (await images.store.fsck()).ok


async def _kept_half_way(registry_host: str, make_proxy: Any, client: RegistryClient,
                         storage: Path, repo: str, seed: int) -> tuple[SampleImage, Digest, int]:
    """A one-layer image (1 MB) published in ``repo``, pulled into ``storage`` through a
    proxy that breaks every blob GET past byte 600,000: the pull fails, its layer kept
    half-way (pending)."""
    image = simple_image(seed, (1_000_000,))
    await publish(registry_host, repo, image, storage.parent, client)
    digest, size = big_layer(image)

    def fault(request: web.Request, sent: int, chunk: bytes) -> bytes | None:
        return None if digest.encoded in request.path and position(request, sent) >= 600_000 else chunk

    _broken, host = await make_proxy(registry_host, fault=fault)
    async with await ImageStore.open(storage) as images:
        with pytest.raises(BlobError, match=f"{digest}.*resume from byte"):
            await copy(f"{host}/{repo}:v1", f"local:{host}/{repo}:v1", images, client)
        assert await images.store.stat(digest) is None
        assert await images.pending_pull(digest) is not None
    return image, digest, size


async def test_interrupted_pull_resumes_in_a_later_run(
    registry_host: str, make_proxy: Any, client: RegistryClient, tmp_path: Path
) -> None:
    storage = tmp_path / "local"
    image, digest, size = await _kept_half_way(registry_host, make_proxy, client, storage, "faults/later", 21)
    async with await ImageStore.open(storage) as images:
        pending = await images.pending_pull(digest)
        assert pending is not None
    # A new process: reopen the store, pull through a healthy path.
    healthy, host2 = await make_proxy(registry_host)
    async with await ImageStore.open(storage) as images:
        kept = (await images.store.resume_ingest(pending)).offset
        assert kept >= 100_000
        result = await copy(f"{host2}/faults/later:v1", f"local:{host2}/faults/later:v1", images, client)
        assert result.digest == image.digest
        assert await images.pending_pull(digest) is None
        assert (await images.store.fsck()).ok
    starts = [int(r.split("=")[1].split("-")[0]) for m, p, r in healthy.log
              if m == "GET" and digest.encoded in p and r]
    assert starts and min(starts) == kept
    assert healthy.blob_bytes == size - kept  # only the missing bytes crossed the wire


async def test_a_registry_that_ignores_range_is_read_past_what_arrived(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    """A connection dropped mid-blob is resumed with Range; a registry that ignores Range
    (no ``Accept-Ranges``, a whole 200 for a ranged GET) answers with the whole blob, and
    the client reads past the bytes it holds and goes on, as containerd does: one more
    GET, not a failure ("run the command again to resume" could never work there) and not
    a third GET from byte 0."""
    image = simple_image(24, (1_000_000,))
    await publish(registry_host, "faults/noranges", image, tmp_path, client)
    digest, size = big_layer(image)
    dropped: list[int] = []

    def fault(request: web.Request, sent: int, chunk: bytes) -> bytes | None:
        if digest.encoded in request.path and sent >= 400_000 and not dropped:
            dropped.append(sent)
            return None
        return chunk

    proxy, host = await make_proxy(registry_host, fault=fault, no_ranges=True)
    out = io.StringIO()
    progress = Progress("json", out)
    result = await copy_image(parse_endpoint(f"{host}/faults/noranges:v1"),
                              parse_endpoint(f"local:{host}/faults/noranges:v1"), images, client,
                              progress, CopyOptions(transfer=SMALL_PARTS))
    assert dropped and result.digest == image.digest
    assert await images.store.read_bytes(digest) == max(image.layers, key=len)
    gets = [r for m, p, r in proxy.log if m == "GET" and digest.encoded in p]
    assert len(gets) == 2 and gets[1].startswith("bytes=")
    # The start, then the whole blob once (and the config blob's few bytes).
    assert dropped[0] + size <= proxy.blob_bytes < dropped[0] + size + 4096
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    done = [e for e in events if e.get("event") == "done" and e.get("id") == str(digest)]
    assert done and done[-1]["status"] == "pulled" and done[-1]["bytes"] == size
    told = [e["text"] for e in events if e.get("event") == "message"]
    assert any("ignores Range: reading past the" in text for text in told), told
    assert await images.pending_pull(digest) is None and (await images.store.fsck()).ok


async def test_a_pull_kept_half_way_goes_on_from_there_on_a_registry_that_ignores_range(
    registry_host: str, make_proxy: Any, client: RegistryClient, tmp_path: Path
) -> None:
    storage = tmp_path / "local"
    image, digest, size = await _kept_half_way(registry_host, make_proxy, client, storage,
                                               "faults/later-noranges", 25)
    plain, host2 = await make_proxy(registry_host, no_ranges=True)
    out = io.StringIO()
    async with await ImageStore.open(storage) as images:
        pending = await images.pending_pull(digest)
        assert pending is not None
        kept = (await images.store.resume_ingest(pending)).offset
        result = await copy_image(parse_endpoint(f"{host2}/faults/later-noranges:v1"),
                                  parse_endpoint(f"local:{host2}/faults/later-noranges:v1"),
                                  images, client, Progress("json", out), CopyOptions())
        assert result.digest == image.digest
        assert await images.store.read_bytes(digest) == max(image.layers, key=len)
        assert await images.pending_pull(digest) is None and (await images.store.fsck()).ok
    assert plain.blob_bytes == size  # one whole GET: read past what the first run kept
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any(f"reading past the {kept} bytes" in e.get("text", "") for e in events), events
    progressed = [e for e in events if e.get("event") == "progress" and e.get("id") == str(digest)]
    assert progressed and progressed[0]["reused"] == kept  # what the first run kept counts


async def _corrupting(registry_host: str, make_proxy: Any, client: RegistryClient, tmp_path: Path,
                      repo: str, seed: int) -> tuple[SampleImage, Digest, str, CopyOptions]:
    """An image published in ``repo`` and a proxy that flips the first byte of its layer:
    the image, the layer's digest, the proxy's host and options that pull one part at a
    time (the client then hangs up on no other request: a registry handler cancelled at
    teardown while it opens a pack file leaks it)."""
    image = await published(registry_host, repo, seed, tmp_path, client)
    digest, _ = big_layer(image)

    def fault(request: web.Request, sent: int, chunk: bytes) -> bytes | None:
        if digest.encoded in request.path and sent == 0:
            return bytes([chunk[0] ^ 1]) + chunk[1:]
        return chunk

    _, host = await make_proxy(registry_host, fault=fault)
    return image, digest, host, CopyOptions(jobs=1, transfer=dataclasses.replace(SMALL_PARTS, window=1))


async def test_corrupted_bytes_are_refused_and_nothing_kept(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    _, digest, host, one_at_a_time = await _corrupting(
        registry_host, make_proxy, client, tmp_path, "faults/corrupt", 22)
    with pytest.raises(BlobError, match=str(digest)):
        await copy_image(parse_endpoint(f"{host}/faults/corrupt:v1"),
                         parse_endpoint(f"local:{host}/faults/corrupt:v1"), images, client,
                         Progress("quiet"), one_at_a_time)
    assert await images.store.stat(digest) is None
    assert await images.pending_pull(digest) is None
    assert await images.resolve(f"{host}/faults/corrupt:v1") is None
    assert (await images.store.fsck()).ok


def fake_registry(image: SampleImage, mode: str, sent: asyncio.Event | None = None,
                  release: asyncio.Event | None = None) -> web.Application:
    """A registry whose blob GETs lie: ``long`` (extra bytes), ``short`` (fewer bytes,
    honest Content-Length), ``truncated`` (Content-Length says more than is sent), or
    ``stall`` (half of the layer, then ``sent`` is set and nothing more comes), or
    ``silent`` (``sent`` is set, and not even the headers come until ``release`` is)."""
    blobs = {str(Digest.of(b)): b for b in (image.config, *image.layers)}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/v2/":
            return web.json_response({})
        if "/manifests/" in path:
            return web.Response(body=image.manifest, content_type="application/vnd.oci.image.manifest.v1+json")
        digest = path.rsplit("/", 1)[1]
        data = blobs[digest]
        if request.method == "HEAD" or digest == str(Digest.of(image.config)):
            return web.Response(body=data if request.method == "GET" else None,
                                headers={"Content-Length": str(len(data))})
        if mode == "long":
            return web.Response(body=data + b"extra")
        if mode == "short":
            return web.Response(body=data[:-10])
        if mode == "silent":
            assert sent is not None and release is not None
            sent.set()
            await release.wait()
            return web.Response(status=503)
        resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        if mode == "stall":
            assert sent is not None
            sent.set()
            await asyncio.Event().wait()  # until the server is torn down
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("mode", ["long", "short", "truncated"])
async def test_wrong_length_is_refused(
    mode: str, aiohttp_server: Any, images: ImageStore, tmp_path: Path
) -> None:
    image = simple_image(23, (100_000,))
    server = await aiohttp_server(fake_registry(image, mode))
    ref = f"127.0.0.1:{server.port}/fake/img:v1"
    digest, _ = big_layer(image)
    async with RegistryClient(ClientOptions(retries=1, backoff=0.01)) as client:
        with pytest.raises(BlobError, match=str(digest)):
            await copy(ref, f"local:{ref}", images, client)
    assert await images.store.stat(digest) is None
    assert await images.resolve(ref) is None
    assert (await images.store.fsck()).ok


async def test_interrupted_push_resumes_its_upload_session(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
) -> None:
    image = make_image([[random_bytes(16_384, 500 + i) for i in range(40)]])  # ~650 KB layer
    digest, size = big_layer(image)
    state = {"patches": 0, "broken": True}

    def drop(request: web.Request) -> bool:
        if request.method == "PATCH":
            state["patches"] += 1
            return bool(state["broken"]) and state["patches"] > 2
        return False

    proxy, host = await make_proxy(pybuild_registry, drop_request=drop)
    ref = f"{host}/faults/push:v1"
    await store_image(images, ref, image)
    with pytest.raises(TransportError, match="PATCH"):
        await copy(f"local:{ref}", ref, images, client)
    assert await images.pending_push(f"{host}/faults/push@{digest}") is not None

    state["broken"] = False
    proxy.log.clear()
    result = await copy(f"local:{ref}", ref, images, client)
    assert result.digest == image.digest
    # It asked the session where it stood and went on from there, not from byte 0.
    status = [e for e in proxy.log if e[0] == "GET" and "/blobs/uploads/" in e[1]]
    ranges = [e[2] for e in proxy.log if e[0] == "PATCH"]
    assert status and ranges and not ranges[0].startswith("0-")
    assert int(ranges[0].split("-")[0]) == 2 * SMALL_PARTS.upload_chunk
    assert not any(e[0] == "POST" for e in proxy.log)
    assert await images.pending_push(f"{host}/faults/push@{digest}") is None
    body, _, _ = await client.get_manifest(parse_image_ref(ref))
    assert body == image.manifest
    assert size > 4 * SMALL_PARTS.upload_chunk



def cut_first_big_upload(cuts: list[tuple[str, int]], *, every: bool = False) -> Any:
    """A ``cut_body`` for the proxy: the first upload request carrying at least 50 kB
    (the layer, never the config) is cut half-way through its body (``every``: so is
    every later request of that session that carries bytes); ``cuts`` records
    (session path, bytes forwarded)."""

    def cut(request: web.Request) -> int | None:
        length = int(request.headers.get("Content-Length", "0"))
        if request.method not in ("PATCH", "PUT") or "/blobs/uploads/" not in request.path:
            return None
        if (not cuts and length >= 50_000) or (
                every and cuts and request.path == cuts[0][0] and length > 0):
            cuts.append((request.path, length // 2))
            return length // 2
        return None

    return cut


@pytest.mark.parametrize("layer_size", [100_000, 600_000], ids=["monolithic", "chunked"])
async def test_push_killed_half_way_resumes_in_process(
    layer_size: int, registry_host: str, make_proxy: Any, images: ImageStore,
    client: RegistryClient, request: pytest.FixtureRequest,
) -> None:
    """The layer's first request carrying bytes dies half-way through its body: the
    client asks the session where it stands and sends the rest from there, in the same
    run (a blob of at most upload_chunk goes in one PUT, a larger one in PATCH chunks)."""
    image = make_image([[random_bytes(16_384, 700 + i) for i in range(layer_size // 16_384)]])
    digest, size = big_layer(image)
    assert (size <= SMALL_PARTS.upload_chunk) == (layer_size == 100_000)
    cuts: list[tuple[str, int]] = []
    proxy, host = await make_proxy(registry_host, cut_body=cut_first_big_upload(cuts))
    ref = f"{host}/faults/killed:v1"
    await store_image(images, ref, image)

    result = await copy(f"local:{ref}", ref, images, client)

    assert result.digest == image.digest and len(cuts) == 1
    session, kept = cuts[0]
    after = proxy.log[[e[1] for e in proxy.log].index(session) + 1:]
    assert next(e[0] for e in after if e[1] == session) == "GET", \
        "first the client asks the session how much it holds"
    patches = [e[2] for e in after if e[1] == session and e[0] == "PATCH"]
    posts = sum(1 for e in proxy.log if e[0] == "POST")
    if "pybuild" in request.node.callspec.id:
        # pybuild's registry keeps the prefix of a broken request: resumed half-way.
        assert int(patches[0].split("-")[0]) == kept
        assert int(patches[-1].split("-")[1]) == size - 1
        assert posts == 2  # config and layer: the session went on
    else:
        # Distribution forgets a session whose request broke: the status query says so
        # (404) and the blob goes again, whole, into a new session.
        assert patches == [] and posts == 3
    assert await images.pending_push(f"{host}/faults/killed@{digest}") is None
    body, _, _ = await client.get_manifest(parse_image_ref(ref))
    assert body == image.manifest


async def test_push_killed_every_time_resumes_in_a_later_run(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
) -> None:
    """Every try dies half-way: the push fails, the session is remembered, and the next
    run continues it where the registry stands (no POST, no byte sent twice)."""
    image = make_image([[random_bytes(16_384, 800 + i) for i in range(6)]])  # ~100 kB: one PUT
    digest, size = big_layer(image)
    assert size <= SMALL_PARTS.upload_chunk
    cuts: list[tuple[str, int]] = []
    proxy, host = await make_proxy(pybuild_registry, cut_body=cut_first_big_upload(cuts, every=True))
    ref = f"{host}/faults/later-push:v1"
    await store_image(images, ref, image)
    with pytest.raises(TransportError):
        await copy(f"local:{ref}", ref, images, client)
    key = f"{host}/faults/later-push@{digest}"
    assert await images.pending_push(key) is not None
    assert len(cuts) == SMALL_PARTS.retries + 1  # every try was cut ...
    sent = sum(n for _, n in cuts)
    assert cuts[-1][1] < cuts[0][1]  # ... and each try only sent what was still missing

    proxy.cut_body = None
    proxy.log.clear()
    result = await copy(f"local:{ref}", ref, images, client)
    assert result.digest == image.digest
    layer = [e for e in proxy.log if e[1] == cuts[0][0]]
    assert [e[0] for e in layer] == ["GET", "PATCH", "PUT"]
    # The resumed chunk starts where the registry stands: after a kept prefix, and at
    # most at what the tries forwarded (a prefix still in the server's
    # receive buffer when its connection died may be dropped, and is then sent again).
    resumed = int(layer[1][2].split("-")[0])
    assert 0 < resumed <= sent
    assert int(layer[1][2].split("-")[1]) == size - 1
    assert not any(e[0] == "POST" for e in proxy.log)  # the config is there, the layer resumed
    assert await images.pending_push(key) is None
    body, _, _ = await client.get_manifest(parse_image_ref(ref))
    assert body == image.manifest


async def test_a_failed_blob_stops_the_others_before_copy_returns(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    """One layer is corrupt, another still arriving: the copy raises for the corrupt one
    only after the other transfer has stopped (and kept its bytes for a resume), so the
    caller may close the store at once."""
    image = simple_image(24, (100_000, 2_000_000))
    await publish(registry_host, "faults/stop", image, tmp_path, client)
    bad, good = Digest.of(image.layers[0]), Digest.of(image.layers[1])
    good_arriving = asyncio.Event()

    async def fault(request: web.Request, sent: int, chunk: bytes) -> bytes | None:
        if good.encoded in request.path:
            good_arriving.set()  # its GET went out after its ingest began
        elif bad.encoded in request.path and sent == 0:
            # The corrupt body is held back until the other blob is on its way, so that
            # there is something to stop (and keep) whatever the machine's load.
            await asyncio.wait_for(good_arriving.wait(), 30)
            return bytes([chunk[0] ^ 1]) + chunk[1:]
        return chunk

    _, host = await make_proxy(registry_host, fault=fault)
    slow = dataclasses.replace(SMALL_PARTS, window=1)
    with pytest.raises(BlobError, match=str(bad)):
        await copy_image(parse_endpoint(f"{host}/faults/stop:v1"),
                         parse_endpoint(f"local:{host}/faults/stop:v1"), images, client,
                         Progress("quiet"), CopyOptions(transfer=slow))
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current and "_move" in repr(t)] == []
    assert await images.store.stat(bad) is None
    if await images.store.stat(good) is None:  # stopped mid-way: what arrived is resumable
        assert await images.pending_pull(good) is not None
    else:  # it had the time to finish first: nothing of it is left pending
        assert await images.pending_pull(good) is None
    assert (await images.store.fsck()).ok


async def test_a_remembered_session_holding_wrong_bytes_is_replaced(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
) -> None:
    """The remembered session holds bytes that are not the blob's: the closing PUT is
    refused (digest), and the blob goes again from byte 0 into a new session."""
    image = simple_image(25, (100_000,))
    digest, _ = big_layer(image)
    proxy, host = await make_proxy(pybuild_registry)
    ref = f"{host}/faults/stale:v1"
    await store_image(images, ref, image)
    stale = await client.start_upload(host, "faults/stale")
    assert stale is not None
    stale = await client.patch_upload(host, "faults/stale", stale, b"\0" * 1000, 0)
    await images.set_pending_push(f"{host}/faults/stale@{digest}", stale)
    proxy.log.clear()

    result = await copy(f"local:{ref}", ref, images, client)

    assert result.digest == image.digest
    layer_puts = [e for e in proxy.log if e[0] == "PUT" and "/blobs/uploads/" in e[1]]
    assert len(layer_puts) == 3  # config, refused stale session, new session
    patches = [e for e in proxy.log if e[0] == "PATCH"]
    assert patches and patches[0][2].startswith("1000-")  # it did continue the stale session first
    assert await images.pending_push(f"{host}/faults/stale@{digest}") is None
    body, _, _ = await client.get_manifest(parse_image_ref(ref))
    assert body == image.manifest


async def test_a_pull_cancelled_twice_keeps_what_arrived_and_closes_cleanly(
    aiohttp_server: Any, client: RegistryClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ctrl-C during a pull, and again while it stops: the blob half received is still
    # kept for a resume (its first checkpoint is taken on the way out), and nothing runs
    # against the closed store afterwards (no "Task exception was never retrieved").
    image = simple_image(24, (2_000_000,))
    sent = asyncio.Event()
    server = await aiohttp_server(fake_registry(image, "stall", sent))
    ref = f"127.0.0.1:{server.port}/stall/img:v1"
    digest, _ = big_layer(image)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    checkpoint = _Sink.checkpoint

    stopping = asyncio.Event()

    async def slow_checkpoint(self: _Sink) -> None:  # a large tail to write, a slow disk
        stopping.set()
        await asyncio.sleep(0.3)
        await checkpoint(self)

    monkeypatch.setattr(_Sink, "checkpoint", slow_checkpoint)
    storage = tmp_path / "local"
    images = await ImageStore.open(storage)
    never = dataclasses.replace(SMALL_PARTS, checkpoint_every=1 << 40, checkpoint_interval=3600)
    task = asyncio.create_task(copy_image(
        parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images, client,
        Progress("quiet"), CopyOptions(transfer=never)))
    await asyncio.wait_for(sent.wait(), 10)
    await asyncio.sleep(0.2)  # the client takes in what was sent
    task.cancel()
    await asyncio.wait_for(stopping.wait(), 10)  # the blob keeps what it has...
    task.cancel()  # ... when the second Ctrl-C comes
    with pytest.raises(asyncio.CancelledError):
        await task
    await images.close()
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    await asyncio.sleep(0.1)
    assert unhandled == []
    async with await ImageStore.open(storage) as images:
        pending = await images.pending_pull(digest)
        assert pending is not None
        ingest = await images.store.resume_ingest(pending)
        assert ingest.offset > 0
        await ingest.abort()


async def test_a_pull_stopped_before_a_blob_got_a_byte_leaves_no_ingest_open(
    aiohttp_server: Any, client: RegistryClient, images: ImageStore,
) -> None:
    # Nothing arrived, so there is nothing to resume: the ingest is dropped, not kept
    # open (and recorded) until it expires.
    image = simple_image(26, (2_000_000,))
    sent, release = asyncio.Event(), asyncio.Event()
    server = await aiohttp_server(fake_registry(image, "silent", sent, release))
    ref = f"127.0.0.1:{server.port}/silent/img:v1"
    digest, _ = big_layer(image)
    task = asyncio.create_task(copy(ref, f"local:{ref}", images, client))
    await asyncio.wait_for(sent.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await images.close()  # it waits for what the stopped blobs keep or drop
    async with await ImageStore.open(images.store.root) as again:
        assert await again.pending_pull(digest) is None
        config = Digest.of(image.config)  # stopped beside it: stored, kept, or dropped
        kept = await again.pending_pull(config) is not None
        assert (await again.store.stats()).open_ingests == int(kept)


async def test_a_blob_that_failed_is_reported_failed_with_its_error_not_interrupted(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    _, digest, host, one_at_a_time = await _corrupting(
        registry_host, make_proxy, client, tmp_path, "faults/reported", 23)
    events = io.StringIO()
    with pytest.raises(BlobError):
        await copy_image(parse_endpoint(f"{host}/faults/reported:v1"),
                         parse_endpoint(f"local:{host}/faults/reported:v1"), images, client,
                         Progress("json", events), one_at_a_time)
    done = {e["id"]: e for e in map(json.loads, events.getvalue().splitlines()) if e["event"] == "done"}
    assert done[str(digest)]["status"] == "failed"
    assert "does not match its digest (its bytes hash to sha256:" in done[str(digest)]["message"]
    assert "resend" not in done[str(digest)]["message"]  # the store's advice, for uploaders
    assert all("message" not in e for key, e in done.items() if key != str(digest))


async def test_a_blob_broken_before_its_first_byte_is_to_be_pulled_again_not_resumed_from_0(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    digest, _ = big_layer(await published(registry_host, "faults/none", 25, tmp_path, client))
    _, host = await make_proxy(registry_host, drop_request=lambda r: digest.encoded in r.path
                               and r.method == "GET")
    options = CopyOptions(jobs=1, transfer=dataclasses.replace(SMALL_PARTS, retries=0))
    with pytest.raises(BlobError) as caught:
        await copy_image(parse_endpoint(f"{host}/faults/none:v1"),
                         parse_endpoint(f"local:{host}/faults/none:v1"), images, client,
                         Progress("quiet"), options)
    assert str(caught.value).endswith("run the command again"), caught.value
