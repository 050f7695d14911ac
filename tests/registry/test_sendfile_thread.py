"""Under uvloop a blob's pieces go out with ``os.sendfile`` in a worker thread. The loop
may close the client's socket during the hop to that thread (the client hung up), and the
kernel may give its descriptor number to the next connection: the thread must not send
on a number it looks up after the hop. Before, it duplicated the descriptor there, and got
EBADF (a 500 and a traceback in the log) or, with the number reused, another client's
connection."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from registry.server import blobs

uvloop = pytest.importorskip("uvloop")


class _Transport:
    """What ``_send_file_range`` asks of a plain TCP transport."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def is_closing(self) -> bool:
        return self.sock.fileno() == -1

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return 0


class _Request:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport


def test_the_socket_closed_during_the_hop_to_the_thread_is_not_looked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    pack = tmp_path / "piece"
    pack.write_bytes(data)
    server_side, client_side = socket.socketpair()
    server_side.setblocking(False)
    received = bytearray()

    def read_all() -> None:
        while chunk := client_side.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    original = blobs._sendfile_blocking

    def loop_closed_the_socket_first(*args: Any) -> int:
        # What the loop does when the client's reset arrives before the worker runs.
        server_side.close()
        return original(*args)

    monkeypatch.setattr(blobs, "_sendfile_blocking", loop_closed_the_socket_first)

    async def send() -> None:
        request: Any = _Request(_Transport(server_side))
        await blobs._send_file_range(request, None, pack, 0, len(data))  # type: ignore[arg-type]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(send())  # before: OSError [Errno 9] Bad file descriptor
    reader.join(10)
    client_side.close()
    assert bytes(received) == data  # the duplicate made before the hop carried it all


def test_clients_that_stop_reading_hold_no_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More clients than the loop has worker threads fill their socket buffers and stop
    # reading: while they wait, another client's pull must still go out at once.
    monkeypatch.setattr(blobs.stalls, "STALL_SECONDS", 5.0)
    data = os.urandom(1 << 20)
    pack = tmp_path / "piece"
    pack.write_bytes(data)
    stalled = [socket.socketpair() for _ in range((os.cpu_count() or 1) + 40)]
    reading, client_side = socket.socketpair()
    for server_side, _ in [*stalled, (reading, client_side)]:
        server_side.setblocking(False)
    received = bytearray()

    def read_all() -> None:
        while len(received) < len(data) and (chunk := client_side.recv(1 << 16)):
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()

    async def send(sock: socket.socket) -> None:
        request: Any = _Request(_Transport(sock))
        await blobs._send_file_range(request, None, pack, 0, len(data))  # type: ignore[arg-type]

    async def pull_beside_stalled_ones() -> float:
        loop = asyncio.get_running_loop()
        stuck = [asyncio.create_task(send(s)) for s, _ in stalled]
        await asyncio.sleep(0.5)  # their buffers are full: they wait for their clients
        started = loop.time()
        try:
            await asyncio.wait_for(send(reading), 4)
        finally:
            elapsed = loop.time() - started
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        return elapsed

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            elapsed = runner.run(pull_beside_stalled_ones())  # before: waited for the stall cut-off
    finally:
        reader.join(10)
        for pair in [*stalled, (reading, client_side)]:
            for s in pair:
                s.close()
    assert bytes(received) == data
    assert elapsed < 2, elapsed
