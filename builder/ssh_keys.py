"""``--ssh ID=KEYFILE[,KEYFILE...]``: private key files served to ``RUN --mount=type=ssh``.

BuildKit's SSH provider takes either an agent's socket or key files, which it loads into
an agent of its own for the build. pybuild does the same with OpenSSH's tools: one
private ``ssh-agent`` per id, on a socket in a fresh 0700 directory, holding that id's
keys (read here and handed to ``ssh-add`` on its stdin, so a key's file mode does not
matter, as with BuildKit); the agent is stopped and its directory removed when the
build ends. Keys with a passphrase cannot be loaded (BuildKit refuses them too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["KeyAgentError", "is_private_key", "key_agents"]

_START_TIMEOUT = 10.0


class KeyAgentError(Exception):
    """A key file could not be served (names the file and what to do)."""


def is_private_key(path: Path) -> bool:
    """Whether ``path`` looks like a PEM/OpenSSH private key file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in head


@contextlib.contextmanager
def _agent(tool: str, keys: Sequence[Path], sid: str) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="pybuild-ssh-"))  # short: socket paths are limited
    sock = home / "agent.sock"
    proc = subprocess.Popen([tool, "-D", "-a", str(sock)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise KeyAgentError(f"--ssh {sid}: ssh-agent did not start")
            time.sleep(0.02)
        add = shutil.which("ssh-add") or "ssh-add"
        env = {"SSH_AUTH_SOCK": str(sock), "PATH": os.environ.get("PATH", ""),
               "SSH_ASKPASS_REQUIRE": "never"}
        for key in keys:
            try:
                data = key.read_bytes()
            except OSError as exc:
                raise KeyAgentError(f"--ssh {sid}={key}: cannot read it: {exc.strerror}") \
                    from None
            done = subprocess.run([add, "-q", "-"], input=data, env=env, capture_output=True,
                                  timeout=30, check=False, start_new_session=True)
            if done.returncode != 0:
                why = done.stderr.decode("utf-8", "replace").strip().splitlines()
                raise KeyAgentError(
                    f"--ssh {sid}={key}: the key cannot be loaded "
                    f"({why[-1] if why else f'ssh-add exited {done.returncode}'}); keys with "
                    "a passphrase are not supported: add the key to an ssh-agent and give "
                    f"its socket (--ssh {sid}=$SSH_AUTH_SOCK)")
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def key_agents(keys: Mapping[str, Sequence[Path]], stack: contextlib.ExitStack) -> dict[str, Path]:
    """Start an agent per id holding its keys (stopped when ``stack`` closes); returns
    id -> agent socket. Raises :class:`KeyAgentError`."""
    if not keys:
        return {}
    tool = shutil.which("ssh-agent")
    if tool is None:
        raise KeyAgentError("--ssh with key files needs ssh-agent and ssh-add: "
                            "apt-get install openssh-client (or give an agent's socket)")
    return {sid: stack.enter_context(_agent(tool, paths, sid)) for sid, paths in keys.items()}
