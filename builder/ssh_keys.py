"""``--ssh ID=KEYFILE[,KEYFILE...]``: private key files served to ``RUN --mount=type=ssh``.

BuildKit's SSH provider takes either an agent's socket or key files, which it loads into
an agent of its own for the build. pybuild does the same with OpenSSH's tools: one
private ``ssh-agent`` per id, on a socket in a fresh 0700 directory, holding that id's
keys (read here and handed to ``ssh-add`` on its stdin, so a key's file mode does not
matter, as with BuildKit); the agent is stopped and its directory removed when the
build ends, and is killed with pybuild if pybuild is killed. Keys with a passphrase are
not supported (BuildKit asks for the passphrase on a terminal; pybuild does not): load
such a key into an agent and pass the agent's socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["KeyAgentError", "is_private_key", "key_agents"]


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


# $0: ssh-agent, $1: its socket. Prints the agent's pid once it listens (nothing when it
# exits first), then waits for EOF on stdin and stops it. pybuild killed before the pid
# is read closes the pipe that pid goes to: the shell must not die of that (SIGPIPE)
# and leave the agent behind.
_WATCHDOG = (
    "trap '' PIPE; "
    '"$0" -D -a "$1" >/dev/null 2>&1 & pid=$!; '
    'while [ ! -S "$1" ]; do kill -0 "$pid" 2>/dev/null || exit 1; sleep 0.01; done; '
    'echo "$pid"; cat >/dev/null; kill "$pid" 2>/dev/null; wait'
)


@contextlib.contextmanager
def _agent(tool: str, keys: Sequence[Path], sid: str) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="pybuild-ssh-"))  # short: socket paths are limited
    sock = home / "agent.sock"
    # The agent holds private keys: it must not outlive a killed build, not even briefly.
    # It runs in the foreground under a shell that reads a pipe only this process writes
    # to: at EOF, however pybuild ends (a SIGKILL too), the shell kills it at once. (A
    # parent-death signal would not do: ssh-agent is setgid, and exec'ing it clears that
    # signal; ssh-agent's own watch of the command it runs looks every 10 s only.)
    # Its own session: a Ctrl-C at the terminal stops pybuild, which stops the agent
    # (here, or by ending the pipe), not the watchdog first.
    proc = subprocess.Popen(["/bin/sh", "-c", _WATCHDOG, tool, str(sock)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    agent_pid = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # "" when ssh-agent failed and exited
        if not line.isdigit():
            raise KeyAgentError(f"--ssh {sid}: ssh-agent did not start")
        agent_pid = int(line)
        add = shutil.which("ssh-add") or "ssh-add"
        env = {"SSH_AUTH_SOCK": str(sock), "SSH_ASKPASS_REQUIRE": "never"}
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
        if agent_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent_pid, signal.SIGTERM)
        if proc.stdin is not None:
            proc.stdin.close()  # the command ends
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
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
