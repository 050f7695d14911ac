"""Git repositories served on loopback for tests that fetch them (a git build context,
``ADD <git URL>``): ``git daemon`` and commits made with a fixed identity."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.tools import require_tool

__all__ = ["commit", "new_repository", "serving_git"]


@contextlib.contextmanager
def serving_git(root: Path) -> Iterator[str]:
    """``git daemon`` on a free loopback port serving the repositories under ``root``;
    yields its URL (``git://127.0.0.1:PORT``: ``URL/NAME`` is ``root/NAME``)."""
    require_tool("git")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                               "--listen=127.0.0.1", f"--port={port}", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        daemon.terminate()
        daemon.wait(10)


def new_repository(path: Path) -> Path:
    """An empty repository at ``path`` whose first branch is ``main``."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


def commit(repo: Path, message: str, *, when: str | None = None) -> str:
    """Commit everything in ``repo`` (at ``when``, a date git reads, if given); the hash."""
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    env = None
    if when is not None:
        env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True, env=env)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
