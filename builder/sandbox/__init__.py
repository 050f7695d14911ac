"""Run a Dockerfile ``RUN`` step in a sandbox; the step's changes land in one directory.

Modules: ``spec`` (what to run: :class:`RunSpec`, mounts, ``parse_mount``), ``users``
(``USER`` resolution), ``rootfs`` (overlayfs or copy), ``flatten`` (the copy), ``caches``
(cache mount directories), ``runner`` (:func:`run_step`), ``_stage`` (the in-namespace
set-up process), ``errors``.
"""

from .errors import (
    InvalidMount,
    OutOfDiskSpace,
    RunFailed,
    SandboxError,
    SandboxSetupError,
    SandboxUnavailable,
    SecretNotFound,
    UnknownUser,
)
from .rootfs import RootfsMode
from .runner import TAIL_LINES, Executor, OutputCallback, StepResult, run_step
from .spec import (
    BindMount,
    CacheMount,
    Mount,
    Network,
    RunSpec,
    SecretMount,
    Sharing,
    SshMount,
    TmpfsMount,
    parse_mount,
)
from .users import ExecUser, resolve_user

__all__ = [
    "TAIL_LINES",
    "BindMount",
    "CacheMount",
    "ExecUser",
    "Executor",
    "InvalidMount",
    "Mount",
    "Network",
    "OutOfDiskSpace",
    "OutputCallback",
    "RootfsMode",
    "RunFailed",
    "RunSpec",
    "SandboxError",
    "SandboxSetupError",
    "SandboxUnavailable",
    "SecretMount",
    "SecretNotFound",
    "Sharing",
    "SshMount",
    "StepResult",
    "TmpfsMount",
    "UnknownUser",
    "parse_mount",
    "resolve_user",
    "run_step",
]
