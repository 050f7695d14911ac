"""Errors raised while running a ``RUN`` step in the sandbox.

::

    SandboxError
    ├── InvalidMount          a ``--mount`` value that cannot be used (unknown key, bad number, ...)
    ├── UnknownUser           ``USER`` names a user or group the image does not have
    ├── SecretNotFound        a ``required`` secret the caller did not provide
    ├── SandboxUnavailable    this host cannot run the sandbox (not root, no bwrap, no overlayfs...)
    ├── SandboxSetupError     the sandbox could not be set up (a mount failed, ...)
    ├── StepInterrupted       the caller interrupted the step (``StepInterrupt``)
    └── RunFailed             the command ran and exited non-zero
        └── OutOfDiskSpace    ... because the disk holding the step's changes filled up

Every message names the problem and, where there is one, the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cas.errors import full_cause

__all__ = [
    "InvalidMount",
    "OutOfDiskSpace",
    "RunFailed",
    "SandboxError",
    "SandboxSetupError",
    "SandboxUnavailable",
    "SecretNotFound",
    "StepInterrupted",
    "UnknownUser",
]


class SandboxError(Exception):
    """Base of every error the sandbox raises."""


class InvalidMount(SandboxError, ValueError):
    def __init__(self, text: str, why: str) -> None:
        super().__init__(
            f"invalid --mount {text!r}: {why}; see "
            "https://docs.docker.com/reference/dockerfile/#run---mount"
        )
        self.text = text
        self.why = why


class UnknownUser(SandboxError):
    def __init__(self, user: str, why: str) -> None:
        super().__init__(
            f"cannot run as user {user!r}: {why}; create it in an earlier step "
            "(e.g. RUN adduser) or use a numeric uid[:gid]"
        )
        self.user = user


class SecretNotFound(SandboxError):
    def __init__(self, secret_id: str) -> None:
        super().__init__(
            f"secret {secret_id!r} is required but was not provided: "
            f"pass it with --secret id={secret_id},src=FILE"
        )
        self.secret_id = secret_id


class SandboxUnavailable(SandboxError):
    """The host lacks what the requested sandbox needs; the message says what to install."""


class SandboxSetupError(SandboxError):
    def __init__(self, why: str, output_tail: Sequence[str] = ()) -> None:
        tail = "\n".join(output_tail)
        super().__init__(
            f"could not set up the sandbox for RUN: {why}"
            + (f"\n{tail}" if tail else "")
        )
        self.output_tail = tuple(output_tail)


class StepInterrupted(SandboxError):
    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(f"RUN {_show(argv)} was interrupted: its processes were killed")
        self.argv = tuple(argv)


class RunFailed(SandboxError):
    """The command ran and exited with a non-zero code (or was killed by a signal)."""

    def __init__(
        self, argv: Sequence[str], exit_code: int, output_tail: Sequence[str]
    ) -> None:
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.output_tail = tuple(output_tail)
        super().__init__(self._message())

    def _message(self) -> str:
        how = (
            f"exit code {self.exit_code}"
            if self.exit_code >= 0
            else f"killed by signal {-self.exit_code}"
        )
        tail = "\n".join(self.output_tail)
        return (
            f"RUN {_show(self.argv)} did not complete successfully: {how}"
            + (f"\nlast output lines:\n{tail}" if tail else " (no output)")
        )


class OutOfDiskSpace(RunFailed):
    """The step failed because the filesystem holding its changes is full."""

    def __init__(
        self,
        argv: Sequence[str],
        exit_code: int,
        output_tail: Sequence[str],
        where: Path,
    ) -> None:
        self.where = where
        # Now, before the step's files are removed: a file system out of inodes has
        # free ones again afterwards.
        self.inodes = "inodes" in full_cause(where)
        super().__init__(argv, exit_code, output_tail)

    def _message(self) -> str:
        full = "has no free inodes left (df -i)" if self.inodes else "is full"
        return (
            f"{super()._message()}\n"
            f"the step ran out of disk space: the filesystem holding {self.where} {full}; "
            "free space there (e.g. `pybuild storage gc`) or build on a bigger disk"
        )


def _show(argv: Sequence[str]) -> str:
    # Shell-wrapped commands read best as the script the user wrote.
    if len(argv) == 3 and argv[1] == "-c":
        return argv[2]
    return " ".join(argv)
