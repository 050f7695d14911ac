"""``COPY --link``: an independent layer, reused when only earlier steps change."""

from __future__ import annotations

import asyncio
import gzip
import io
import stat
import tarfile
from pathlib import Path

from cas import Store


def _members(storage: Path, digest: object) -> dict[str, tarfile.TarInfo]:
    """The tar members of a layer blob in the build's CAS."""

    async def read() -> bytes:
        store = await Store.open(storage)
        try:
            return b"".join([chunk async for chunk in store.read(digest)])  # type: ignore[arg-type]
        finally:
            await store.close()

    data = gzip.decompress(asyncio.run(read()))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar}


def test_link_layers_ignore_the_stage_and_survive_a_rebase(
        context_of, build, tmp_path: Path) -> None:
    ctx = context_of("link")
    storage = tmp_path / "storage"
    out = tmp_path / "out"
    first = build(ctx, storage=storage, local=out, source_date_epoch=1700000000)
    # parents are made fresh (BuildKit's empty layer): /opt/private loses its 0700 and the
    # /opt/alias symlink is not followed but replaced by a directory
    assert (out / "opt/private/sub/payload.txt").read_text() == "payload\n"
    assert stat.S_IMODE((out / "opt/private").stat().st_mode) == 0o755
    assert (out / "opt/alias").is_dir() and not (out / "opt/alias").is_symlink()
    owned = (out / "opt/alias/owned.txt").stat()
    assert (owned.st_uid, owned.st_gid) == (1000, 50)
    assert (out / "relative/payload.txt").read_text() == "payload\n"
    assert (out / "after.txt").read_text() == "payload\n"
    layers = first.image.manifest.layers
    linked = [d.digest for d in layers[3:6]]
    names = _members(storage, linked[0])
    assert sorted(names) == ["opt", "opt/private", "opt/private/sub",
                             "opt/private/sub/payload.txt"]
    assert names["opt/private"].mode == 0o755 and names["opt/private"].uid == 0

    (ctx / "early.txt").write_text("v2\n")
    second = build(ctx, storage=storage, source_date_epoch=1700000000)
    cached = [n for n in second.cached_steps if "--link" in n]
    ran = " ".join(second.ran_steps)
    assert len(cached) == 3, second.cached_steps
    assert "COPY early.txt" in ran and "RUN cat" in ran and "--link" not in ran
    assert [d.digest for d in second.image.manifest.layers[3:6]] == linked
    assert second.image.digest != first.image.digest


def test_link_with_chmod_is_an_ordinary_copy(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("link")
    (ctx / "Dockerfile").write_text(
        (ctx / "Dockerfile").read_text().split("\nCOPY --link")[0] + "\n"
        + "COPY --link --chmod=0600 payload.txt /opt/alias/\n")
    out = tmp_path / "out"
    build(ctx, local=out)
    # not linked (as BuildKit): the symlink is followed and /opt/private keeps its mode
    assert (out / "opt/alias").is_symlink()
    assert stat.S_IMODE((out / "opt/private").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "opt/private/payload.txt").stat().st_mode) == 0o600
