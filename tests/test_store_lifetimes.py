"""Every store survives ``close()`` while other threads still use it.

One suite for every class that owns a database connection or a file: the cas ``Store``,
its ``SqliteMetadata`` and pack writers, the client's ``ImageStore``, the build cache and
the registry's metadata. Threads call the store in a loop while the main thread closes
it; every call must either work or raise ``StoreClosed`` (closing a SQLite connection
that another thread is using can crash the interpreter), and a call after ``close()``
raises ``StoreClosed``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder.cache import BuildCache, CachedLayer
from cas import Digest, Store, StoreClosed
from cas.pack_files import FilesystemPacks, _DirectWriter, _FileWriter
from cas.sqlite_meta import SqliteMetadata
from registry.client.image_store import ImageStore
from registry.server.metadata_sqlite import SqliteMetadata as Metadata

THREADS = 4
ROUNDS = 10
# Calls each thread makes before the close at most, and how long a round may take.
CALLS = 5000
ROUND_SECONDS = 20.0


@dataclass
class Subject:
    """How to use and close one kind of store: ``use(i)`` is one short call."""

    use: Callable[[int], Any]
    close: Callable[[], Any]
    finish: Callable[[], Any] = lambda: None  # after the round's last check


def _in_loop(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())  # type: ignore[arg-type]


async def _cas_store(tmp: Path) -> Subject:
    tmp.mkdir(parents=True)
    store = await Store.open(tmp / "cas")
    kept = await store.put(b"kept")

    async def use(i: int) -> None:
        if i % 3 == 0:
            await store.put(os.urandom(64))
        elif i % 3 == 1:
            assert await store.read_bytes(kept.digest) == b"kept"
        else:
            assert await store.stat(kept.digest) is not None

    return Subject(lambda i: _in_loop(lambda: use(i)), lambda: _in_loop(store.close))


async def _metadata(tmp: Path) -> Subject:
    tmp.mkdir(parents=True)
    meta = SqliteMetadata(tmp / "meta.db")

    def use(i: int) -> None:
        if i % 3 == 0:
            meta.create_ingest(f"i{threading.get_ident()}x{i}", "sha256")
        elif i % 3 == 1:
            meta.blob("sha256:" + "0" * 64)
        else:
            meta.stats()

    return Subject(use, meta.close)


async def _pack_writer(tmp: Path, direct: bool) -> Subject:
    writer = FilesystemPacks(tmp / "packs", direct=direct).create("ab" * 16)
    assert isinstance(writer, _DirectWriter if direct else _FileWriter)
    payload = os.urandom(80 << 10)  # big enough for the copy that runs without the GIL

    def use(i: int) -> None:
        if i % 8 == 7:
            writer.sync()
        else:
            writer.append(payload)

    return Subject(use, writer.close)


async def _image_store(tmp: Path) -> Subject:
    images = await ImageStore.open(tmp / "images")

    async def use(i: int) -> None:
        if i % 2:
            await images.set_pending_pull(Digest.of(str(i).encode()), f"ingest{i}")
        else:
            await images.list()

    return Subject(lambda i: _in_loop(lambda: use(i)), lambda: _in_loop(images.close))


async def _build_cache(tmp: Path) -> Subject:
    cache = BuildCache(tmp / "builder" / "cache.db")
    layer = CachedLayer("sha256:" + "1" * 64, 1, "sha256:" + "2" * 64, "application/x")

    def use(i: int) -> None:
        if i % 2:
            cache.record(f"k{i}", "p", "RUN x", {"i": i}, layer)
        else:
            cache.lookup(f"k{i - 1}")

    return Subject(use, cache.close)


async def _registry_metadata(tmp: Path) -> Subject:
    # Opened in a loop of its own that runs for the whole round, as a server's would.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)  # type: ignore[arg-type]

    meta = call(Metadata.open(tmp / "registry.db"))

    def use(i: int) -> None:
        if i % 2:
            call(meta.ensure_repository(f"repo{i % 50}"))
        else:
            call(meta.tags("repo1", None, 10))

    def finish() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()

    return Subject(use, lambda: call(meta.close()), finish)


SUBJECTS: dict[str, Callable[[Path], Awaitable[Subject]]] = {
    "cas-store": _cas_store,
    "cas-metadata": _metadata,
    "pack-writer-direct": lambda tmp: _pack_writer(tmp, True),
    "pack-writer-buffered": lambda tmp: _pack_writer(tmp, False),
    "image-store": _image_store,
    "build-cache": _build_cache,
    "registry-metadata": _registry_metadata,
}


@pytest.mark.parametrize("kind", sorted(SUBJECTS))
def test_close_while_threads_use_the_store(kind: str, tmp_path: Path) -> None:
    for rnd in range(ROUNDS):
        subject = asyncio.run(SUBJECTS[kind](tmp_path / f"round{rnd}"))  # type: ignore[arg-type]
        calls = [0] * THREADS
        failures: list[BaseException] = []
        started = threading.Barrier(THREADS + 1, timeout=ROUND_SECONDS)
        deadline = time.monotonic() + ROUND_SECONDS

        def hammer(n: int) -> None:
            started.wait()
            for i in range(CALLS):
                if time.monotonic() > deadline:
                    return
                try:
                    subject.use(n * CALLS + i)
                except StoreClosed:
                    return
                except BaseException as exc:
                    failures.append(exc)
                    return
                calls[n] += 1

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        started.wait()
        # Close once every thread is well under way.
        while min(calls) < 20 and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.001)
        try:
            subject.close()
            for t in threads:
                t.join(timeout=ROUND_SECONDS)
            _check_round(subject, rnd, threads, failures, calls)
        finally:
            subject.finish()


def _check_round(subject: Subject, rnd: int, threads: list[threading.Thread],
                 failures: list[BaseException], calls: list[int]) -> None:
    assert not any(t.is_alive() for t in threads), "a thread still runs after close"
    assert not failures, f"round {rnd}: {failures[0]!r}"
    assert min(calls) >= 20, "the store was closed before every thread used it"
    with pytest.raises(StoreClosed, match="is closed"):
        subject.use(1)
    with pytest.raises(StoreClosed, match="is closed"):
        subject.use(2)
    subject.close()  # a second close is harmless
