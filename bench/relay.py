"""A TCP relay that delays one direction: what the shaped-link benchmark puts in front of
a registry inside its network namespace (the kernel here has no ``netem``).

``python3 -m bench.relay --listen HOST:PORT --to HOST:PORT --delay SECONDS``: every byte a
client sends reaches the target ``delay`` seconds later (each read is stamped when it
arrives and written when its time comes, so the delay adds to the round trip without
limiting throughput); the target's answers go back at once. With the delay on requests
only, one round trip takes ``delay`` longer, as ``netem delay`` on one interface gives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket

__all__ = ["main"]

_READ = 1 << 20
_QUEUED = 16 << 20  # bytes held back in one direction before the relay stops reading


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(_READ):
        dst.write(data)
        await dst.drain()
    with contextlib.suppress(OSError):
        dst.write_eof()


async def _pump_delayed(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    room = asyncio.Event()
    room.set()
    queued = 0

    async def send() -> None:
        nonlocal queued
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()
            queued -= len(data)
            if queued < _QUEUED:
                room.set()

    sender = asyncio.create_task(send())
    try:
        while True:
            await room.wait()
            data = await src.read(_READ)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
            queued += len(data)
            if queued >= _QUEUED:
                room.clear()
        await sender
    finally:
        sender.cancel()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        _nodelay(writer)
        _nodelay(up_writer)
        try:
            await asyncio.gather(_pump_delayed(reader, up_writer, delay), _pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    server = await asyncio.start_server(handle, *listen, backlog=256)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_addr)
    parser.add_argument("--to", required=True, type=_addr)
    parser.add_argument("--delay", type=float, default=0.010)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, args.to, args.delay))


if __name__ == "__main__":
    main()
