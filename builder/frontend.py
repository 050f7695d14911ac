"""Dockerfile text -> stages of located instructions, for the build executor.

This is the executor's own thin reading of a Dockerfile, over the ``dockerfile`` package
(a wrapper of BuildKit's own Go parser), so that line continuations, JSON forms, heredoc
detection and escape directives behave exactly as BuildKit's. Variable expansion is done
later, per stage, by :mod:`builder.shellwords` (the executor knows the ARG/ENV scope).

Contract: :func:`parse_dockerfile` returns a :class:`Dockerfile` whose ``stages`` are in
file order; instructions before the first ``FROM`` may only be ``ARG`` (they become
``global_args``). Errors are :class:`DockerfileError` naming file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dockerfile as _bk

__all__ = ["Dockerfile", "DockerfileError", "Instruction", "Stage", "parse_dockerfile",
           "parse_trigger"]


class DockerfileError(ValueError):
    """A Dockerfile that cannot be built: ``file:line: problem (what to do)``."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line = file, line
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction as written: keyword (upper case), ``--flags``, arguments.

    ``json`` is true for the exec (JSON array) form. ``sub`` is the instruction an
    ``ONBUILD`` wraps. ``heredocs`` are ``(name, content)`` pairs.
    """

    keyword: str
    args: tuple[str, ...]
    flags: tuple[str, ...]
    json: bool
    original: str
    line: int
    heredocs: tuple[tuple[str, str], ...] = ()
    sub: str | None = None

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value`` (the last one given), or None."""
        found = None
        for f in self.flags:
            key, eq, value = f[2:].partition("=")
            if key == name:
                found = value if eq else "true"
        return found

    def flag_all(self, name: str) -> tuple[str, ...]:
        """Every value of a repeatable flag (``--mount``, ``--exclude``)."""
        out = []
        for f in self.flags:
            key, eq, value = f[2:].partition("=")
            if key == name:
                out.append(value if eq else "true")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Stage:
    """``FROM base [AS name]`` and the instructions up to the next ``FROM``."""

    index: int
    name: str | None
    base: str
    platform: str | None
    line: int
    instructions: tuple[Instruction, ...]

    @property
    def ref(self) -> str:
        """How the stage is named in messages: its name, else its index."""
        return self.name or str(self.index)


@dataclass(frozen=True, slots=True)
class Dockerfile:
    path: str
    global_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]

    def stage(self, ref: str) -> Stage | None:
        """A stage by name (case-insensitive, as BuildKit) or by index."""
        for s in self.stages:
            if s.name is not None and s.name.lower() == ref.lower():
                return s
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


_KNOWN = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
}


def _convert(cmd: _bk.Command) -> Instruction:
    return Instruction(
        keyword=cmd.cmd.upper(),
        args=tuple(cmd.value),
        flags=tuple(cmd.flags),
        json=bool(cmd.json),
        original=cmd.original,
        line=cmd.start_line,
        heredocs=tuple((h.name, h.content) for h in getattr(cmd, "heredocs", ()) or ()),
        sub=cmd.sub_cmd.upper() if cmd.sub_cmd else None,
    )


def parse_trigger(text: str, where: str) -> Instruction:
    """An ``ONBUILD`` trigger (``RUN echo hi``) as an instruction."""
    try:
        cmds = _bk.parse_string(text + "\n")
    except _bk.GoParseError as exc:
        raise DockerfileError(where, 0, f"ONBUILD trigger {text!r}: {exc}") from exc
    if len(cmds) != 1:
        raise DockerfileError(where, 0, f"ONBUILD trigger {text!r} is not one instruction")
    return _convert(cmds[0])


def parse_dockerfile(text: str, path: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile ``text``; ``path`` only names it in errors."""
    try:
        cmds = _bk.parse_string(text)
    except _bk.GoParseError as exc:
        raise DockerfileError(path, 0, f"{exc} (fix the syntax)") from exc
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    current: dict[str, object] | None = None
    body: list[Instruction] = []

    def close() -> None:
        if current is not None:
            stages.append(Stage(instructions=tuple(body), **current))  # type: ignore[arg-type]

    for cmd in cmds:
        ins = _convert(cmd)
        if ins.keyword not in _KNOWN:
            raise DockerfileError(path, ins.line, f"unknown instruction {ins.keyword}")
        if ins.keyword == "FROM":
            close()
            body = []
            args = ins.args
            if len(args) == 3 and args[1].upper() == "AS":
                name: str | None = args[2].lower()
            elif len(args) == 1:
                name = None
            else:
                raise DockerfileError(path, ins.line,
                                      "FROM takes 'image' or 'image AS name'")
            current = {"index": len(stages), "name": name, "base": args[0],
                       "platform": ins.flag("platform"), "line": ins.line}
        elif current is None:
            if ins.keyword != "ARG":
                raise DockerfileError(path, ins.line,
                                      f"{ins.keyword} before the first FROM (only ARG may be)")
            global_args.append(ins)
        else:
            body.append(ins)
    close()
    if not stages:
        raise DockerfileError(path, 0, "no FROM instruction: a Dockerfile needs at least one")
    return Dockerfile(path, tuple(global_args), tuple(stages))


def read_dockerfile(path: Path) -> Dockerfile:
    """Read and parse the file at ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DockerfileError(str(path), 0, f"cannot read the Dockerfile: {exc.strerror}") from exc
    return parse_dockerfile(text, path.name)
