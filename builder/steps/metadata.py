"""Instructions that only change the image config: ENV, LABEL, EXPOSE, VOLUME, USER,
CMD, ENTRYPOINT, STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD, MAINTAINER (and WORKDIR's
config half). Each updates :class:`ImageState` exactly as Docker does and records a
history entry with ``empty_layer: true`` and BuildKit's ``created_by``.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping

from ..frontend import Instruction
from ..image import ImageState
from ..shellwords import process_word, process_words
from .common import BuildError

__all__ = ["METADATA", "apply_metadata", "command_form", "resolve_workdir"]

METADATA = {"ENV", "LABEL", "EXPOSE", "VOLUME", "USER", "CMD", "ENTRYPOINT", "STOPSIGNAL",
            "HEALTHCHECK", "SHELL", "ONBUILD", "MAINTAINER"}
DEFAULT_SHELL = ("/bin/sh", "-c")


def _pairs(ins: Instruction, scope: Mapping[str, str], where: str) -> list[tuple[str, str]]:
    args = list(ins.args)
    if len(args) % 2:
        raise BuildError(where, f"{ins.keyword} needs key=value pairs")
    return [(process_word(args[i], scope), process_word(args[i + 1], scope))
            for i in range(0, len(args), 2)]


def command_form(ins: Instruction, state: ImageState) -> tuple[str, ...]:
    """Exec form as written; shell form wrapped in the stage's SHELL."""
    if ins.json:
        return tuple(ins.args)
    return (*(state.config.shell or DEFAULT_SHELL), " ".join(ins.args))


def resolve_workdir(state: ImageState, path: str) -> str:
    base = state.config.working_dir or "/"
    return posixpath.normpath(posixpath.join(base, path))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def _duration(text: str, where: str) -> int:
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise BuildError(where, f"HEALTHCHECK: {text!r} is not a duration (like 30s or 1m30s)")
    return int(total)


def _healthcheck(ins: Instruction, where: str) -> dict[str, object]:
    args = list(ins.args)
    if args and args[0].upper() == "NONE":
        return {"Test": ["NONE"]}
    if not args or args[0].upper() != "CMD":
        raise BuildError(where, "HEALTHCHECK takes NONE or CMD ...")
    rest = args[1:]
    test = ["CMD", *rest] if ins.json else ["CMD-SHELL", " ".join(rest)]
    out: dict[str, object] = {"Test": test}
    names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
             "start-interval": "StartInterval"}
    for flag, key in names.items():
        value = ins.flag(flag)
        if value is not None:
            out[key] = _duration(value, where)
    retries = ins.flag("retries")
    if retries is not None:
        out["Retries"] = int(retries)
    return out


def apply_metadata(ins: Instruction, state: ImageState, scope: Mapping[str, str],
                   where: str, cmd_set: list[bool], created: str) -> None:
    """Apply one metadata instruction; ``scope`` is the expansion environment (ARGs
    overridden by ENV); ``cmd_set[0]`` tracks whether this stage set CMD itself."""
    k = ins.keyword
    cfg = state.config
    if k == "ENV":
        pairs = _pairs(ins, scope, where)
        state.set_env(pairs)
        created_by = "ENV " + " ".join(f"{a}={b}" for a, b in pairs)
    elif k == "LABEL":
        pairs = _pairs(ins, scope, where)
        state.update(labels={**(cfg.labels or {}), **dict(pairs)})
        created_by = "LABEL " + " ".join(f"{a}={b}" for a, b in pairs)
    elif k == "EXPOSE":
        ports = dict(cfg.exposed_ports or {})
        for word in (w for a in ins.args for w in process_words(a, scope)):
            port = word if "/" in word else f"{word}/tcp"
            ports[port.lower()] = {}
        state.update(exposed_ports=dict(sorted(ports.items())))
        created_by = "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(ports)) + "]"
    elif k == "VOLUME":
        vols = dict(cfg.volumes or {})
        words = [process_word(a, scope) for a in ins.args] if ins.json else \
            [w for a in ins.args for w in process_words(a, scope)]
        for v in words:
            if not v:
                raise BuildError(where, "VOLUME specified can not be an empty string")
            vols[v] = {}
        state.update(volumes=vols)
        created_by = "VOLUME [" + " ".join(words) + "]"
    elif k == "USER":
        user = process_word(ins.args[0], scope)
        state.update(user=user)
        created_by = f"USER {user}"
    elif k in ("CMD", "ENTRYPOINT"):
        value = command_form(ins, state)
        if k == "CMD":
            state.update(cmd=value)
            cmd_set[0] = True
        else:
            state.update(entrypoint=value)
            if not cmd_set[0]:
                state.update(cmd=None)  # Docker: ENTRYPOINT resets an inherited CMD
        created_by = f"{k} {json.dumps(list(value))}"
        if not ins.json:
            state.update(args_escaped=True)
    elif k == "STOPSIGNAL":
        sig = process_word(ins.args[0], scope)
        state.update(stop_signal=sig)
        created_by = f"STOPSIGNAL {sig}"
    elif k == "HEALTHCHECK":
        hc = _healthcheck(ins, where)
        state.update(healthcheck=hc)
        created_by = f"HEALTHCHECK {json.dumps(hc)}"
    elif k == "SHELL":
        if not ins.json:
            raise BuildError(where, 'SHELL requires the JSON form: SHELL ["executable", "param"]')
        state.update(shell=tuple(ins.args))
        created_by = f"SHELL {json.dumps(list(ins.args))}"
    elif k == "ONBUILD":
        trigger = ins.original.split(None, 1)[1] if " " in ins.original else ""
        state.update(on_build=(*(cfg.on_build or ()), trigger))
        created_by = f"ONBUILD {trigger}"
    elif k == "MAINTAINER":
        created_by = f"MAINTAINER {' '.join(ins.args)}"
    else:  # pragma: no cover - the executor dispatches only METADATA keywords here
        raise BuildError(where, f"{k} is not a metadata instruction")
    state.add_history(created_by, created, empty=True)
