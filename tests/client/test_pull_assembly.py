"""A pull that knows a blob's pieces commits it from its recipe: the pieces the store
holds are not re-cut or rewritten, only read for the digest, which is still verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import registry.client.copy as copy_module
from cas import Digest, Ingest
from cas.holders import HolderKind, parse_holder
from cas.sqlite_meta import SqliteMetadata
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.pull import pull_blob
from registry.client.refs import parse_image_ref
from registry.client.remote import RegistryClient, TransportError
from registry.client.transfer import BlobError
from registry.errors import RegistryError
from registry.oci import Descriptor

from .helpers import make_image, random_bytes
from .test_pieces import copy, publish

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


async def _two_versions(registry: str, repo: str, tmp_path: Path, images: ImageStore,
                        client: RegistryClient, seed: int) -> tuple[Any, Any]:
    """v1 and v2 (two of 24 frames changed) published; v1 pulled into ``images``."""
    chunks = [random_bytes(65_536, seed + i) for i in range(24)]
    changed = list(chunks)
    changed[3] = random_bytes(65_536, seed + 500)
    changed[17] = random_bytes(70_000, seed + 501)
    v1, v2 = make_image([chunks]), make_image([changed])
    await publish(f"{registry}/{repo}", {"v1": v1, "v2": v2}, tmp_path, client)
    await copy(f"{registry}/{repo}:v1", f"local:{registry}/{repo}:v1", images, client)
    return v1, v2


def _spy_bytes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Bytes fed to ingests as bytes (write/receive) and as whole pieces, from now on."""
    fed = {"bytes": 0, "appended": 0, "reused": 0, "within": 0}
    write, receive = Ingest.write, Ingest.receive
    append, reuse = Ingest.append_pieces, Ingest.reuse_pieces

    async def spy_write(self: Ingest, data: Any) -> None:
        fed["bytes"] += len(data)
        await write(self, data)

    async def spy_receive(self: Ingest, *args: Any, **kw: Any) -> int:
        n = await receive(self, *args, **kw)
        fed["bytes"] += n
        return n

    async def spy_append(self: Ingest, pieces: Any) -> None:
        fed["appended"] += sum(len(p) for p in pieces)
        await append(self, pieces)

    async def spy_reuse(self: Ingest, pieces: Any, within: Any = ()) -> None:
        await reuse(self, pieces, within)
        fed["reused"] += sum(n for _, n in pieces)
        fed["within"] += bool(within)

    monkeypatch.setattr(Ingest, "write", spy_write)
    monkeypatch.setattr(Ingest, "receive", spy_receive)
    monkeypatch.setattr(Ingest, "append_pieces", spy_append)
    monkeypatch.setattr(Ingest, "reuse_pieces", spy_reuse)
    return fed


async def test_v2_over_v1_is_committed_from_the_recipe(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1, v2 = await _two_versions(pybuild_registry, "asm/app", tmp_path, images, client, 3000)
    fed = _spy_bytes(monkeypatch)
    held_rows: list[int] = []
    hold = SqliteMetadata.hold_existing

    def spy_hold(self: SqliteMetadata, ingest_id: str, entries: Any, **kw: Any) -> Any:
        if kw.get("expected"):  # as reuse_pieces holds pieces one by one
            held_rows.append(len(entries))
        return hold(self, ingest_id, entries, **kw)

    monkeypatch.setattr(SqliteMetadata, "hold_existing", spy_hold)
    progress = Progress("quiet")
    from registry.client.copy import CopyOptions, copy_image, parse_endpoint
    result = await copy_image(parse_endpoint(f"{pybuild_registry}/asm/app:v2"),
                              parse_endpoint(f"local:{pybuild_registry}/asm/app:v2"), images,
                              client, progress, CopyOptions())
    assert result.digest == v2.digest
    layer = v2.layers[0]
    digest = Digest.of(layer)
    assert await images.store.read_bytes(digest) == layer
    # Only the manifest and the config went in as bytes; the layer came as pieces, most
    # of them held.
    assert fed["bytes"] <= len(v2.config) + len(v2.manifest)
    assert fed["reused"] + fed["appended"] == len(layer)
    assert 0 < fed["appended"] < len(layer) // 5
    assert progress.reused >= fed["reused"]
    # The held runs were held by the v1 layer they lie in (one link), not piece by
    # piece; the commit removed that link.
    assert fed["within"] >= 1 and sum(held_rows) == 0
    v1_layer = Digest.of(v1.layers[0])
    assert [parse_holder(h).kind for h in await images.store.holders(v1_layer)] == [HolderKind.IMAGE]
    # The recipe is the registry's, piece for piece.
    remote = await client.recipe(pybuild_registry, "asm/app", digest)
    local = await images.store.recipe(digest)
    assert [(p.offset, p.length, p.key) for p in local.pieces] == remote
    assert (await images.store.fsck()).ok


async def test_a_local_piece_the_store_no_longer_holds_is_fetched(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The local layers' pieces are taken as held without asking the store; one that GC
    # took meanwhile fails to be held, and its run is fetched from the registry instead.
    _, v2 = await _two_versions(pybuild_registry, "asm/gone", tmp_path, images, client, 3500)
    layer = v2.layers[0]
    digest = Digest.of(layer)
    remote = await client.recipe(pybuild_registry, "asm/gone", digest)
    missing = [k for _, _, k in remote if not await images.store.has_pieces([k])]
    assert missing  # the changed frames
    found = copy_module.local_piece_sources

    async def stale(images: ImageStore, src: Any) -> Any:
        sources = await found(images, src)
        v1_layer = next(iter(sources.recipes))
        for key in missing:  # as a recipe read before a GC would have them
            sources[key] = (v1_layer, 0)
        return sources

    monkeypatch.setattr(copy_module, "local_piece_sources", stale)
    fed = _spy_bytes(monkeypatch)
    result = await copy(f"{pybuild_registry}/asm/gone:v2",
                        f"local:{pybuild_registry}/asm/gone:v2", images, client)
    assert result.digest == v2.digest
    assert await images.store.read_bytes(digest) == layer
    # The run that failed to be held came from the registry as pieces (here the whole
    # layer: all 24 frames were one run of "local" pieces); nothing came as bytes.
    assert fed["appended"] > 0
    assert fed["reused"] + fed["appended"] == len(layer)
    assert fed["bytes"] <= len(v2.config) + len(v2.manifest)
    assert (await images.store.fsck()).ok


async def _pull_v2_layer(registry: str, repo: str, images: ImageStore,
                         client: RegistryClient, v2: Any) -> tuple[Descriptor, str]:
    layer = v2.layers[0]
    desc = Descriptor(LAYER, Digest.of(layer), len(layer))
    status = await pull_blob(client, images, parse_image_ref(f"{registry}/{repo}:v2"), desc,
                             Progress("quiet"), recipes=True)
    return desc, status


async def test_a_recipe_that_reorders_held_pieces_never_commits(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile recipe naming pieces the client holds, in another order (every piece
    key right, every length right, the blob wrong): the digest check refuses it."""
    _, v2 = await _two_versions(pybuild_registry, "asm/evil", tmp_path, images, client, 4000)
    real = client.recipe

    async def swapped(host: str, name: str, digest: Digest) -> list[tuple[int, int, str]]:
        pieces = await real(host, name, digest)
        (o0, n0, k0), (_, n1, k1) = pieces[0], pieces[1]
        assert n0 == n1
        return [(o0, n0, k1), (o0 + n0, n1, k0), *pieces[2:]]

    monkeypatch.setattr(client, "recipe", swapped)
    fed = _spy_bytes(monkeypatch)
    with pytest.raises(BlobError, match="does not match its digest"):
        await _pull_v2_layer(pybuild_registry, "asm/evil", images, client, v2)
    assert fed["reused"] > 0  # it was assembled, and then refused
    assert await images.store.stat(Digest.of(v2.layers[0])) is None
    assert await images.pending_pull(Digest.of(v2.layers[0])) is None
    assert await images.store.list_ingests() == []
    # An honest recipe afterwards pulls it.
    monkeypatch.setattr(client, "recipe", real)
    desc, status = await _pull_v2_layer(pybuild_registry, "asm/evil", images, client, v2)
    assert status == "pulled"
    assert await images.store.read_bytes(desc.digest) == v2.layers[0]


async def test_a_recipe_with_a_wrong_key_for_a_missing_piece_never_commits(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, v2 = await _two_versions(pybuild_registry, "asm/key", tmp_path, images, client, 5000)
    real = client.recipe
    have: set[str] = set()

    async def lying(host: str, name: str, digest: Digest) -> list[tuple[int, int, str]]:
        pieces = await real(host, name, digest)
        have.update(await images.store.has_pieces(k for _, _, k in pieces))
        return [(o, n, k if k in have else "00" * 32) for o, n, k in pieces]

    monkeypatch.setattr(client, "recipe", lying)
    with pytest.raises(BlobError, match="do not match the recipe's piece keys"):
        await _pull_v2_layer(pybuild_registry, "asm/key", images, client, v2)
    assert await images.store.stat(Digest.of(v2.layers[0])) is None
    assert "00" * 32 not in await images.store.has_pieces(["00" * 32])


async def test_a_recipe_that_does_not_cover_the_blob_is_pulled_as_bytes(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, v2 = await _two_versions(pybuild_registry, "asm/short", tmp_path, images, client, 6000)
    real = client.recipe

    async def short(host: str, name: str, digest: Digest) -> list[tuple[int, int, str]]:
        return (await real(host, name, digest))[:-1]

    monkeypatch.setattr(client, "recipe", short)
    fed = _spy_bytes(monkeypatch)
    desc, status = await _pull_v2_layer(pybuild_registry, "asm/short", images, client, v2)
    assert status == "pulled"
    assert await images.store.read_bytes(desc.digest) == v2.layers[0]
    assert fed["reused"] == fed["appended"] == 0


def test_plan_groups_held_and_missing_runs_and_refuses_gaps() -> None:
    from registry.client.pull_assembly import plan_assembly

    pieces = [(0, 10, "a"), (10, 10, "b"), (20, 10, "c"), (30, 10, "d"), (40, 10, "e")]
    parts = plan_assembly(pieces, 50, {"a", "b", "e"}, part_size=15)
    assert parts is not None
    assert [(p.start, p.end, p.local, [k for _, _, k in p.keys]) for p in parts] == [
        (0, 20, True, ["a", "b"]),  # held runs are not cut at part_size
        (20, 30, False, ["c"]),  # missing runs are: one Range request each
        (30, 40, False, ["d"]),
        (40, 50, True, ["e"]),
    ]
    assert plan_assembly(pieces, 51, {"a"}, 15) is None  # does not cover the blob
    assert plan_assembly([(0, 10, "a"), (11, 10, "b")], 21, {"a"}, 15) is None  # a gap
    assert plan_assembly([(0, 10, "a"), (10, 0, "b"), (10, 10, "c")], 20, {"a"}, 15) is None


async def test_a_broken_assembled_pull_keeps_nothing_and_the_next_one_pulls(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
    tmp_path: Path,
) -> None:
    from aiohttp import web

    _, v2 = await _two_versions(pybuild_registry, "asm/cut", tmp_path, images, client, 7000)
    layer = v2.layers[0]
    digest = Digest.of(layer)
    broken = True

    def fault(request: web.Request, sent: int, chunk: bytes) -> bytes | None:
        # Every Range request for the new layer's missing pieces breaks off.
        return None if broken and digest.encoded in request.path else chunk

    _proxy, host = await make_proxy(pybuild_registry, fault=fault)
    desc = Descriptor(LAYER, digest, len(layer))
    src = parse_image_ref(f"{host}/asm/cut:v2")
    with pytest.raises(BlobError, match="fetches only the pieces still missing"):
        await pull_blob(client, images, src, desc, Progress("quiet"), recipes=True)
    assert await images.store.stat(digest) is None
    assert await images.pending_pull(digest) is None
    assert await images.store.list_ingests() == []
    broken = False
    assert await pull_blob(client, images, src, desc, Progress("quiet"), recipes=True) == "pulled"
    assert await images.store.read_bytes(digest) == layer


async def test_v2_hashes_from_the_state_kept_for_v1(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A layer changed in its middle: the digest of v2's layer starts from the SHA-256
    state kept for v1's at the last MiB before the change; the pieces before it are held
    but not read, and the commit is still verified."""
    from cas import ingest_assembly
    from cas.digest_states import STEP, available

    if not available():
        pytest.skip("no libcrypto with SHA256_Init")
    chunks = [random_bytes(65_536, 9000 + i) for i in range(64)]
    changed = list(chunks)
    changed[40] = random_bytes(65_536, 9500)  # ~2.5 MiB into the layer
    v1, v2 = make_image([chunks]), make_image([changed])
    await publish(f"{pybuild_registry}/asm/states", {"v1": v1, "v2": v2}, tmp_path, client)
    await copy(f"{pybuild_registry}/asm/states:v1", f"local:{pybuild_registry}/asm/states:v1",
               images, client)
    resumed: list[int] = []
    hash_from = Ingest.hash_from

    async def spy_hash_from(self: Ingest, blob: Digest, upto: int) -> int:
        resumed.append(await hash_from(self, blob, upto))
        return resumed[-1]

    read = [0]
    real = ingest_assembly.hash_locations

    def spy_read(core: Any, hasher: Any, locs: Any) -> None:
        read[0] += sum(loc.length for loc in locs)
        real(core, hasher, locs)

    def no_rehash(self: Any, algorithm: str) -> Digest:
        raise AssertionError("the digest was computed again in full")

    monkeypatch.setattr(Ingest, "hash_from", spy_hash_from)
    monkeypatch.setattr(ingest_assembly, "hash_locations", spy_read)
    monkeypatch.setattr(ingest_assembly.IngestAssembly, "_rehash", no_rehash)
    await copy(f"{pybuild_registry}/asm/states:v2", f"local:{pybuild_registry}/asm/states:v2",
               images, client)
    layer = v2.layers[0]
    assert await images.store.read_bytes(Digest.of(layer)) == layer
    assert resumed and resumed[0] >= 2 * STEP
    assert read[0] <= len(layer) - resumed[0]
    assert (await images.store.fsck()).ok


async def test_every_recipe_is_asked_for_at_the_start_and_fetched_once(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pull that moves one blob at a time still asks for each blob's recipe at its
    start (a blob waiting for its turn does not wait a round trip more when it gets it),
    and takes each recipe from that answer, not from a second request."""
    import registry.client.pull_assembly as assembly_module
    from registry.client.copy import CopyOptions, copy_image, parse_endpoint

    layers = [[random_bytes(65_536, 7000 + 100 * n + i) for i in range(6)] for n in range(3)]
    changed = [list(chunks) for chunks in layers]
    for n, chunks in enumerate(changed):
        chunks[2] = random_bytes(65_536, 7900 + n)
    v1, v2 = make_image(layers), make_image(changed)
    await publish(f"{pybuild_registry}/ahead/app", {"v1": v1, "v2": v2}, tmp_path, client)
    await copy(f"{pybuild_registry}/ahead/app:v1", f"local:{pybuild_registry}/ahead/app:v1",
               images, client)

    events: list[str] = []
    get_recipe, assemble = RegistryClient._get_recipe, assembly_module.assemble

    async def spy_get_recipe(self: RegistryClient, host: str, name: str, digest: Digest) -> Any:
        events.append(f"recipe {digest}")
        return await get_recipe(self, host, name, digest)

    async def spy_assemble(client_: Any, images_: Any, src: Any, desc: Descriptor, *args: Any,
                           **kw: Any) -> Any:
        events.append(f"assemble {desc.digest}")
        return await assemble(client_, images_, src, desc, *args, **kw)

    monkeypatch.setattr(RegistryClient, "_get_recipe", spy_get_recipe)
    monkeypatch.setattr("registry.client.pull.assemble", spy_assemble)
    result = await copy_image(parse_endpoint(f"{pybuild_registry}/ahead/app:v2"),
                              parse_endpoint(f"local:{pybuild_registry}/ahead/app:v2"), images,
                              client, Progress("quiet"), CopyOptions(jobs=1))
    assert result.digest == v2.digest
    for layer in v2.layers:
        assert await images.store.read_bytes(Digest.of(layer)) == layer
    new_layers = {str(Digest.of(layer)) for layer in v2.layers}
    asked = [e.split()[1] for e in events if e.startswith("recipe")]
    assembled = [e.split()[1] for e in events if e.startswith("assemble")]
    assert new_layers <= set(asked) and sorted(assembled) == sorted(new_layers)
    assert len(asked) == len(set(asked))  # each recipe fetched once
    # One blob at a time, yet every layer's recipe was asked for before the second
    # layer began to be assembled.
    second = events.index(f"assemble {assembled[1]}")
    assert all(events.index(f"recipe {d}") < second for d in new_layers)


async def test_a_recipe_asked_for_ahead_and_never_taken_is_stopped_at_close(
    pybuild_registry: str, caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import gc

    import registry.client.remote as remote_module
    from registry.client.session import ClientOptions

    missing = Digest.of(b"no such blob")
    async with RegistryClient(ClientOptions(retries=0)) as c:
        c.prefetch_recipe(pybuild_registry, "ahead/none", missing)
        c.prefetch_recipe(pybuild_registry, "ahead/none", missing)  # asked once
        (task,) = c._recipes.values()
        await asyncio.sleep(0)
        # Taken: the failure (no such blob) surfaces where the recipe is asked for.
        with pytest.raises((RegistryError, TransportError)):
            await c.recipe(pybuild_registry, "ahead/none", missing)
        c.prefetch_recipe(pybuild_registry, "ahead/none", missing)
        (left,) = c._recipes.values()
        assert left is not task
    assert c._recipes == {} and left.done()
    del task, left
    # However many blobs a manifest names, at most _AHEAD recipes are asked for ahead.
    async with RegistryClient(ClientOptions(retries=0)) as c:
        for n in range(remote_module._AHEAD + 10):
            c.prefetch_recipe(pybuild_registry, "ahead/none", Digest.of(b"blob %d" % n))
        assert len(c._recipes) == remote_module._AHEAD
    gc.collect()
    assert "never retrieved" not in caplog.text


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b'{"size": 3, "pieces": "abc"}',
    b'{"pieces": [{"offset": 0, "length": 3, "key": "k"}]}', b"\xff",
])
async def test_a_recipe_that_is_not_one_is_a_clear_transport_error(
    client: RegistryClient, monkeypatch: pytest.MonkeyPatch, body: bytes,
) -> None:
    # What a hostile or broken registry answers: TransportError (the pull says what went
    # wrong), never an internal error.
    async def answer(*args: Any, **kw: Any) -> tuple[Any, bytes]:
        return None, body

    monkeypatch.setattr(client, "_request", answer)
    with pytest.raises(TransportError, match="is not one"):
        await client.recipe("127.0.0.1:1", "any/repo", Digest.of(b"abc"))
