"""The blocking connections that carry requests without a body (registry.client.connections)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from registry.client.connections import Wire, WireError

Handler = Callable[[str, asyncio.StreamWriter], Awaitable[bool]]


@asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP/1.1 server on loopback; ``handle(request_line, writer)`` answers one request
    and returns whether to keep the connection. Yields its origin and one entry per
    connection accepted."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not await handle(head.split(b"\r\n", 1)[0].decode(), writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


def ok(body: bytes, length: int | None = None) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
            .encode() + body)


def read_all(wire: Wire, url: str) -> bytes:
    resp = wire.request("GET", url, {})
    out = bytearray()
    buf = memoryview(bytearray(7))
    try:
        while n := resp.readinto(buf):
            out += buf[:n]
    finally:
        resp.release()
    return bytes(out)


async def test_a_connection_read_to_the_end_is_reused_and_query_strings_are_kept() -> None:
    seen: list[str] = []

    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        seen.append(line.split()[1])
        writer.write(ok(b"hello world"))
        await writer.drain()
        return True

    async with raw_server(handle) as (origin, connections):
        wire = Wire()
        try:
            for _ in range(3):
                assert await asyncio.to_thread(read_all, wire, f"{origin}/v2/?a=1") == b"hello world"
            resp = await asyncio.to_thread(wire.request, "GET", f"{origin}/token", {},
                                           [("scope", "x:pull"), ("scope", "y:push")])
            assert await resp.read() == b"hello world"
            resp.release()
        finally:
            wire.close()
    assert len(connections) == 1
    assert seen == ["/v2/?a=1"] * 3 + ["/token?scope=x%3Apull&scope=y%3Apush"]


async def test_a_chunked_body_is_read_to_its_end_and_its_connection_reused() -> None:
    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async with raw_server(handle) as (origin, connections):
        wire = Wire()
        try:
            resp = await asyncio.to_thread(wire.request, "GET", f"{origin}/blob", {})
            assert resp.length is None
            resp.release()  # unread: its connection is closed, not reused
            for _ in range(2):
                assert await asyncio.to_thread(read_all, wire, f"{origin}/blob") == b"hello world"
        finally:
            wire.close()
    assert len(connections) == 2


async def test_a_body_given_up_half_way_closes_its_connection() -> None:
    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"x" * 100_000))
        await writer.drain()
        return True

    async with raw_server(handle) as (origin, connections):
        wire = Wire()
        try:
            def half() -> None:
                resp = wire.request("GET", f"{origin}/blob", {})
                resp.readinto(memoryview(bytearray(10)))
                resp.release()

            await asyncio.to_thread(half)
            assert len(await asyncio.to_thread(read_all, wire, f"{origin}/blob")) == 100_000
        finally:
            wire.close()
    assert len(connections) == 2


async def test_a_truncated_body_is_an_error_naming_what_is_missing() -> None:
    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"y" * 60, length=100))
        await writer.drain()
        return False  # hang up 40 bytes early

    async with raw_server(handle) as (origin, _):
        wire = Wire()
        try:
            with pytest.raises(WireError, match="closed 40 bytes before the end"):
                await asyncio.to_thread(read_all, wire, f"{origin}/blob")
        finally:
            wire.close()


async def test_a_stale_idle_connection_is_replaced_once() -> None:
    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"fine"))
        await writer.drain()
        return False  # closes after every answer, without saying so

    async with raw_server(handle) as (origin, connections):
        wire = Wire()
        try:
            assert await asyncio.to_thread(read_all, wire, f"{origin}/a") == b"fine"
            await asyncio.sleep(0.05)
            assert await asyncio.to_thread(read_all, wire, f"{origin}/b") == b"fine"
        finally:
            wire.close()
    assert len(connections) == 2


async def test_abort_wakes_a_reader_blocked_on_the_body() -> None:
    release = asyncio.Event()

    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"z" * 10, length=1000))
        await writer.drain()
        await release.wait()  # the rest never comes
        return False

    async with raw_server(handle) as (origin, _):
        wire = Wire()
        try:
            resp = await asyncio.to_thread(wire.request, "GET", f"{origin}/blob", {})
            blocked = threading.Event()

            def read() -> int | str:
                assert resp.readinto(memoryview(bytearray(10))) == 10
                buf = memoryview(bytearray(990))
                blocked.set()
                try:
                    return resp.readinto(buf)
                except WireError as exc:
                    return str(exc)

            reader = asyncio.ensure_future(resp.run(read))
            await asyncio.to_thread(blocked.wait, 10)
            await asyncio.sleep(0.05)
            resp.abort()
            outcome = await asyncio.wait_for(reader, 10)
            assert outcome == 0 or "closed" in str(outcome)
            resp.release()
        finally:
            release.set()
            wire.close()


async def test_a_response_that_arrives_for_a_cancelled_caller_gives_its_connection_back() -> None:
    """A request cancelled while under way (another blob of the copy failed): the answer
    that comes later is released, so its connection is reused, not left open."""
    answer = asyncio.Event()

    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        if line.split()[1] == "/slow":
            await answer.wait()
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        return True

    async with raw_server(handle) as (origin, connections):
        wire = Wire()
        try:
            slow = asyncio.ensure_future(wire.send("HEAD", f"{origin}/slow", {}))
            for _ in range(200):  # until the request is under way
                if connections:
                    break
                await asyncio.sleep(0.01)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            answer.set()
            for _ in range(200):  # until the worker thread has had the answer
                if sum(len(c) for c in wire._idle.values()):
                    break
                await asyncio.sleep(0.01)
            resp = await wire.send("HEAD", f"{origin}/next", {})
            assert resp.status == 204
            resp.release()
        finally:
            wire.close()
    assert len(connections) == 1


async def test_a_response_released_after_close_closes_its_connection() -> None:
    async def handle(line: str, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        return True

    async with raw_server(handle) as (origin, connections):
        wire = Wire()
        resp = await wire.send("HEAD", f"{origin}/v2/", {})
        sock = resp._sock
        wire.close()
        resp.release()  # read to the end, but the pool is closed: not kept
        assert not any(wire._idle.values())
        assert sock is not None and sock.fileno() == -1
    assert len(connections) == 1


async def test_an_unreachable_host_is_a_wire_error() -> None:
    wire = Wire(connect_timeout=5)
    try:
        with pytest.raises(WireError, match="127.0.0.1:9"):
            await asyncio.to_thread(wire.request, "GET", "http://127.0.0.1:9/v2/", {})
    finally:
        wire.close()


def test_the_client_does_not_import_aiohttp() -> None:
    """aiohttp (~0.1 s to import) is the server's; pull, push and copy do without it."""
    code = ("import sys, registry.client.copy, registry.client.pull, registry.client.push, registry.client.remote, "
            "registry.client.cli; "
            "assert 'aiohttp' not in sys.modules, 'aiohttp was imported'")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
