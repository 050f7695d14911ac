"""``RUN --mount=type=ssh``: a socket inside the step that relays to the host's SSH agent.

As BuildKit does, the step does not get the host agent's own socket: :class:`AgentRelay`
listens on a fresh socket (owner and mode from the mount) in a short private directory
on the host, and copies bytes both ways between each connection made to it and a new
connection to the host agent. The runner bind-mounts that socket at the mount's target
for the step's duration; when the step ends the relay stops and its directory goes.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["AgentRelay"]

_CHUNK = 1 << 16


class AgentRelay:
    """A listening unix socket that forwards every connection to ``upstream``.

    Use as a context manager: on entry :attr:`path` exists (owned ``uid:gid``, ``mode``)
    and accepts connections (one thread serves them all); on exit every connection is
    closed and the socket removed. A connection the host agent refuses is closed at once,
    so the client sees the agent as gone rather than hanging.
    """

    def __init__(self, upstream: Path, *, mode: int = 0o600, uid: int = 0, gid: int = 0) -> None:
        self.upstream = upstream
        self.mode, self.uid, self.gid = mode, uid, gid
        # unix socket paths are limited to 107 bytes: a short directory of its own
        self._dir = Path(tempfile.mkdtemp(prefix="pybuild-ssh-"))
        self.path = self._dir / "agent.sock"
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.path))
            os.chown(self.path, self.uid, self.gid)
            os.chmod(self.path, self.mode)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="ssh-agent-relay",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._listener is not None:
            self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _serve(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "stop")
        peers: dict[socket.socket, socket.socket] = {}

        def drop(sock: socket.socket) -> None:
            other = peers.pop(sock, None)
            for s in (sock, other):
                if s is None:
                    continue
                peers.pop(s, None)
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(s)
                s.close()

        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "accept":
                        try:
                            client, _ = self._listener.accept()
                        except BlockingIOError:
                            continue
                        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        try:
                            up.connect(str(self.upstream))
                        except OSError:
                            up.close()
                            client.close()
                            continue
                        client.setblocking(True)
                        peers[client], peers[up] = up, client
                        sel.register(client, selectors.EVENT_READ, "pipe")
                        sel.register(up, selectors.EVENT_READ, "pipe")
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(_CHUNK)
                        if data:
                            peers[sock].sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        drop(sock)
        finally:
            for sock in list(peers):
                drop(sock)
            sel.close()
