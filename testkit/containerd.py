"""A private containerd for tests that pull with ``ctr``.

``running_containerd()`` starts ``containerd`` (root only) with its root, state and socket
in a short temporary directory (unix socket paths are limited to ~100 bytes), the CRI
plugin off, and stops it afterwards. ``Containerd.ctr(...)`` is the ``ctr`` command line for
it; images are unpacked with the ``native`` snapshotter, which needs no kernel support.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .docker_engine import remove_tree
from .tools import missing, require_tool

__all__ = ["Containerd", "running_containerd"]


@dataclass(frozen=True)
class Containerd:
    address: str

    def ctr(self, *args: str) -> list[str]:
        return [require_tool("ctr"), "--address", self.address, *args]


@contextmanager
def running_containerd(start_timeout: float = 30) -> Iterator[Containerd]:
    binary = require_tool("containerd")
    if os.geteuid() != 0:
        missing("containerd needs root here: run the test as root")
    base = Path(tempfile.mkdtemp(prefix="pbctrd", dir="/tmp"))
    config = base / "config.toml"
    address = str(base / "c.sock")
    config.write_text(
        "version = 2\n"
        f'root = "{base / "root"}"\n'
        f'state = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{address}"\n'
        f'[ttrpc]\n  address = "{address}.ttrpc"\n'
    )
    log = open(base / "containerd.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        running = Containerd(address)
        deadline = time.monotonic() + start_timeout
        while True:
            probe = subprocess.run(running.ctr("version"), capture_output=True, check=False, timeout=30)
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "containerd did not start:\n" + (base / "containerd.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        remove_tree(base)
