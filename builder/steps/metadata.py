"""Instructions that only change the image config: ENV, LABEL, EXPOSE, VOLUME, USER,
CMD, ENTRYPOINT, STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD, MAINTAINER. Each updates
:class:`ImageState` exactly as Docker does and records a history entry with
``empty_layer: true`` and BuildKit's ``created_by`` (ONBUILD records none, as in
BuildKit; :mod:`.history` formats them). Instructions arrive expanded
(:func:`builder.dockerfile.stages.plan_build`).
"""

from __future__ import annotations

import posixpath

from ..dockerfile.instructions import (
    Cmd,
    Entrypoint,
    Env,
    Expose,
    Healthcheck,
    Instruction,
    Label,
    Maintainer,
    Onbuild,
    Shell,
    StopSignal,
    User,
    Volume,
)
from ..dockerfile.stages import parse_ports
from ..image import ImageState
from .common import BuildError
from .history import go_slice_q, healthcheck_created_by

__all__ = ["METADATA", "apply_metadata", "clean_path", "command_form", "resolve_workdir",
           "workdir_value", "working_dir"]

METADATA = (Env, Label, Expose, Volume, User, Cmd, Entrypoint, StopSignal, Healthcheck,
            Shell, Onbuild, Maintainer)
DEFAULT_SHELL = ("/bin/sh", "-c")


def command_form(command: tuple[str, ...], shell_form: bool,
                 state: ImageState) -> tuple[str, ...]:
    """Exec form as written; shell form wrapped in the stage's SHELL."""
    if not shell_form:
        return tuple(command)
    return (*(state.config.shell or DEFAULT_SHELL), " ".join(command))


def clean_path(path: str) -> str:
    """Go's ``path.Clean`` (Python's normpath keeps a leading ``//``)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def working_dir(state: ImageState) -> str:
    """The directory a RUN starts in and relative paths start from: the config's
    WorkingDir, which may be written as WORKDIR gave it (``/app/``), cleaned; a base
    image's relative one (``app``, which Docker never writes) is taken from ``/``, as
    BuildKit's state takes it."""
    return clean_path("/" + (state.config.working_dir or "/"))


def resolve_workdir(state: ImageState, path: str) -> str:
    return clean_path(posixpath.join(working_dir(state), path))


def workdir_value(state: ImageState, path: str) -> str:
    """What WORKDIR puts into the config, as BuildKit's NormalizeWorkdir: an absolute
    path as written (``WORKDIR /app/`` is ``/app/``), a relative one joined to the current
    directory and cleaned."""
    if path.startswith("/"):
        return path
    return clean_path(posixpath.join(working_dir(state), path))


def _healthcheck(ins: Healthcheck) -> dict[str, object]:
    out: dict[str, object] = {"Test": list(ins.test)}
    for attr, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start_period", "StartPeriod"), ("start_interval", "StartInterval"),
                      ("retries", "Retries")):
        value = getattr(ins, attr)
        if value:
            out[key] = value
    return out


def apply_metadata(ins: Instruction, state: ImageState, where: str, cmd_set: list[bool],
                   created: str) -> None:
    """Apply one metadata instruction; ``cmd_set[0]`` tracks whether this stage set CMD
    itself (an inherited CMD is reset by ENTRYPOINT, a CMD of this stage is not)."""
    if isinstance(ins, Env):
        pairs = [(kv.key, kv.value) for kv in ins.env]
        state.set_env(pairs)
        created_by = "ENV " + " ".join(f"{a}={b}" for a, b in pairs)
    elif isinstance(ins, Label):
        pairs = [(kv.key, kv.value) for kv in ins.labels]
        state.set_labels(pairs)
        created_by = "LABEL " + " ".join(f"{a}={b}" for a, b in pairs)
    elif isinstance(ins, Expose):
        cfg = state.config
        ports = dict(cfg.exposed_ports or {})
        these: set[str] = set()
        try:
            for spec in ins.ports:
                these.update(parse_ports(spec))
        except ValueError as exc:
            raise BuildError(where, str(exc)) from exc
        ports.update((p, {}) for p in these)
        state.update(exposed_ports=dict(sorted(ports.items())))
        # BuildKit's entry names this instruction's ports only, not those exposed before
        created_by = "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(these)) + "]"
    elif isinstance(ins, Volume):
        vols = dict(state.config.volumes or {})
        for v in ins.paths:
            if not v:
                raise BuildError(where, "VOLUME specified can not be an empty string")
            vols[v] = {}
        state.update(volumes=vols)
        created_by = "VOLUME [" + " ".join(ins.paths) + "]"
    elif isinstance(ins, User):
        state.update(user=ins.user)
        created_by = f"USER {ins.user}"
    elif isinstance(ins, (Cmd, Entrypoint)):
        # An empty exec form ([]) leaves no Cmd/Entrypoint in the config (BuildKit's
        # config omits empty lists), so images built FROM this one see none.
        value = command_form(ins.command, ins.shell_form, state) or None
        if isinstance(ins, Cmd):
            # BuildKit marks every CMD (either form) ArgsEscaped, and ENTRYPOINT never
            # (the base's value stays): the config says what docker build's says.
            state.update(cmd=value, args_escaped=True)
            cmd_set[0] = True
            created_by = f"CMD {go_slice_q(value or ())}"
        else:
            state.update(entrypoint=value)
            if not cmd_set[0]:
                state.update(cmd=None)  # Docker: ENTRYPOINT resets an inherited CMD
            created_by = f"ENTRYPOINT {go_slice_q(value or ())}"
    elif isinstance(ins, StopSignal):
        state.update(stop_signal=ins.signal)
        created_by = f"STOPSIGNAL {ins.signal}"
    elif isinstance(ins, Healthcheck):
        hc = _healthcheck(ins)
        state.update(healthcheck=hc)
        created_by = healthcheck_created_by(hc)
    elif isinstance(ins, Shell):
        state.update(shell=tuple(ins.shell))
        created_by = "SHELL [" + " ".join(ins.shell) + "]"
    elif isinstance(ins, Onbuild):
        # BuildKit records the trigger in the config only: no history entry
        state.update(on_build=(*(state.config.on_build or ()), ins.expression))
        return
    elif isinstance(ins, Maintainer):
        state.author = ins.maintainer
        created_by = f"MAINTAINER {ins.maintainer}"
    else:  # pragma: no cover - the stage scheduler dispatches only METADATA types here
        raise BuildError(where, f"{ins.keyword} is not a metadata instruction")
    state.add_history(created_by, created, empty=True)
