"""Throw-away non-root users, for tests of what unprivileged users run (rootless builds).

:func:`temporary_user` (as root) creates a user with a home directory and, unless told
otherwise, a subordinate uid and gid range of 65536 ids above every range the machine
already hands out (so newuidmap accepts it and it overlaps nobody's); the user, its home
and its ranges are removed afterwards. :meth:`SystemUser.argv` runs a command as the user
(``setpriv``), :func:`python_for` finds a Python with this checkout's packages that the
user may execute.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .tools import missing, require_tool

__all__ = ["SUBID_COUNT", "SystemUser", "python_for", "shared_workspace", "temporary_user"]

SUBID_COUNT = 65536
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SystemUser:
    name: str
    uid: int
    gid: int
    home: Path
    subid_start: int | None  # first subordinate uid (and gid); None: the user has none

    def argv(self, *command: str) -> list[str]:
        """``command`` run as this user (its uid, gid and groups; the environment is the
        caller's to give)."""
        return [require_tool("setpriv"), f"--reuid={self.uid}", f"--regid={self.gid}",
                "--init-groups", "--", *command]

    def run(self, *command: str, env: Mapping[str, str],
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*command), env=dict(env), capture_output=True,
                              text=True, timeout=timeout, check=False, cwd="/")


def _next_free_subid() -> int:
    end = 100000
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(path).read_text().splitlines():
                fields = line.split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    end = max(end, int(fields[1]) + int(fields[2]))
    return -(-end // SUBID_COUNT) * SUBID_COUNT  # the next multiple of the range size


@contextlib.contextmanager
def shared_workspace(prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A new directory (mode 0755, in ``parent`` or the temporary directory) that root and
    a test user can both reach, as pytest's own (0700) are not; removed afterwards."""
    ws = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(ws, 0o755)
    try:
        yield ws
    finally:
        shutil.rmtree(ws, ignore_errors=True)


@contextlib.contextmanager
def temporary_user(prefix: str, *, subids: bool = True) -> Iterator[SystemUser]:
    """A new user ``<prefix>-<pid>`` (see the module docstring); removed afterwards."""
    if os.geteuid() != 0:
        missing("creating a test user needs root")
    useradd, usermod, userdel = (require_tool(t) for t in ("useradd", "usermod", "userdel"))
    name = f"{prefix}-{os.getpid()}"[:32]
    # No automatic ranges: useradd's may collide with ranges written by hand.
    subprocess.run([useradd, "--create-home", "--shell", "/usr/sbin/nologin",
                    "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                   check=True, capture_output=True)
    try:
        start = None
        if subids:
            start = _next_free_subid()
            ids = f"{start}-{start + SUBID_COUNT - 1}"
            subprocess.run([usermod, "--add-subuids", ids, "--add-subgids", ids, name],
                           check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        yield SystemUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), start)
    finally:
        if subids:
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run([usermod, "--del-subuids", f"1-{2**32 - 2}", "--del-subgids",
                                f"1-{2**32 - 2}", name], check=True, capture_output=True)
        subprocess.run([userdel, "--remove", name], check=False, capture_output=True)


def python_for(user: SystemUser) -> tuple[list[str], dict[str, str]]:
    """``(argv prefix, environment)`` that run this checkout's Python code as ``user``:
    this interpreter if the user may execute it, else the system's ``python3`` of the
    same version with this environment's packages on ``PYTHONPATH`` (a virtualenv's
    interpreter may live in root's home). Reports through :func:`missing` when neither
    works (the checkout must be readable by other users)."""
    _let_others_search(_ROOT)
    paths = [str(_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "HOME": str(user.home),
           "LANG": "C.UTF-8"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    errors = []
    for python in dict.fromkeys(candidates):
        if not os.path.exists(python):
            continue
        # The build runs sys.executable again (the sandbox's stage): the probe too.
        probe = user.run(python, "-c", "import subprocess, sys; subprocess.run([sys.executable, "
                         "'-c', 'import builder.build, zstandard, blake3'], check=True)", env=env)
        if probe.returncode == 0:
            return [python], env
        errors.append(f"{python}: {probe.stderr.strip().splitlines()[-1:] or probe.returncode}")
    missing(f"user {user.name} cannot run this checkout's Python code ({'; '.join(errors)}); "
            "put the checkout and its virtualenv where other users can read them")


def _let_others_search(path: Path) -> None:
    """Let other users list ``path`` and search the directories above it where they may
    not (a checkout cloned into a private temporary directory): Python's import system
    lists a directory on ``sys.path``, searching it is not enough. Each mode is put back
    when this process exits."""
    for directory, wanted in ((path, stat.S_IROTH | stat.S_IXOTH),
                              *((parent, stat.S_IXOTH) for parent in path.parents)):
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & wanted != wanted:
            os.chmod(directory, mode | wanted)
            atexit.register(os.chmod, directory, mode)
