"""Run a Dockerfile ``RUN`` step in a sandbox; the step's changes land in one directory.

Modules: ``spec`` (what to run: :class:`RunSpec`, mounts, ``sandbox_mount``), ``users``
(``USER`` resolution), ``rootfs`` (overlayfs or copy), ``flatten`` (the copy), ``caches``
(cache mount directories), ``runner`` (:func:`run_step`), ``_stage`` (the in-namespace
set-up process), ``confine`` (runc's read-only and masked paths, the seccomp filter),
``errors``.
"""

# Names are imported from their modules on first use (PEP 562): a build whose RUN
# steps all come from the cache never loads the sandbox.

import typing as _typing

from cas.lazy import lazy_attributes as _lazy_attributes

if _typing.TYPE_CHECKING:
    from .errors import (
        InvalidMount,
        OutOfDiskSpace,
        RunFailed,
        SandboxError,
        SandboxSetupError,
        SandboxUnavailable,
        SecretNotFound,
        StepInterrupted,
        UnknownUser,
    )
    from .process import StepInterrupt
    from .rootfs import RootfsMode
    from .runner import TAIL_LINES, Executor, OutputCallback, StepResult, run_step
    from .spec import (
        BindMount,
        CacheMount,
        Network,
        RunSpec,
        SandboxMount,
        SecretMount,
        Sharing,
        SshMount,
        TmpfsMount,
        sandbox_mount,
    )
    from .users import ExecUser, resolve_user

_WHERE = {
    "InvalidMount": "errors",
    "OutOfDiskSpace": "errors",
    "RunFailed": "errors",
    "SandboxError": "errors",
    "SandboxSetupError": "errors",
    "SandboxUnavailable": "errors",
    "SecretNotFound": "errors",
    "StepInterrupted": "errors",
    "StepInterrupt": "process",
    "UnknownUser": "errors",
    "RootfsMode": "rootfs",
    "TAIL_LINES": "runner",
    "Executor": "runner",
    "OutputCallback": "runner",
    "StepResult": "runner",
    "run_step": "runner",
    "BindMount": "spec",
    "CacheMount": "spec",
    "SandboxMount": "spec",
    "Network": "spec",
    "RunSpec": "spec",
    "SecretMount": "spec",
    "Sharing": "spec",
    "SshMount": "spec",
    "TmpfsMount": "spec",
    "sandbox_mount": "spec",
    "ExecUser": "users",
    "resolve_user": "users",
}

__all__ = [
    "TAIL_LINES",
    "BindMount",
    "CacheMount",
    "ExecUser",
    "Executor",
    "InvalidMount",
    "Network",
    "OutOfDiskSpace",
    "OutputCallback",
    "RootfsMode",
    "RunFailed",
    "RunSpec",
    "SandboxError",
    "SandboxMount",
    "SandboxSetupError",
    "SandboxUnavailable",
    "SecretMount",
    "SecretNotFound",
    "Sharing",
    "SshMount",
    "StepInterrupt",
    "StepInterrupted",
    "StepResult",
    "TmpfsMount",
    "UnknownUser",
    "resolve_user",
    "run_step",
    "sandbox_mount",
]


__getattr__ = _lazy_attributes(__name__, _WHERE)
