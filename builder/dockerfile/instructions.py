"""The typed instructions of stage two: one frozen dataclass per Dockerfile instruction.

Each holds the arguments *as written* (variables unexpanded; :mod:`.stages` expands the
instructions Docker expands). :mod:`.instruction_parsers` makes them from syntax nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .mounts import Mount
from .syntax import Keyword

__all__ = [
    "Add", "Arg", "ArgDef", "Cmd", "Copy", "Entrypoint", "Env", "Expose", "From",
    "Healthcheck", "InlineFile", "Instruction", "KeyValue", "Label", "Maintainer", "Onbuild",
    "Run", "Shell", "StopSignal", "User", "Volume", "Workdir",
]


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str


@dataclass(frozen=True)
class ArgDef:
    """``ARG name`` (default None) or ``ARG name=default``."""

    name: str
    default: str | None = None


@dataclass(frozen=True)
class InlineFile:
    """A heredoc's content (leading tabs already removed for ``<<-``)."""

    name: str
    data: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """What every instruction has: where it was and how it was written."""

    keyword: ClassVar[Keyword]
    start_line: int = 0
    end_line: int = 0
    column: int = 1
    original: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``instruction``, the typed fields, ``lines``."""
        out: dict[str, Any] = {"instruction": str(self.keyword)}
        for f in fields(self):
            if f.name in ("start_line", "end_line", "column", "original"):
                continue
            out[f.name.rstrip("_")] = _jsonable(getattr(self, f.name))
        out["lines"] = [self.start_line, self.end_line]
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Instruction):
        return value.to_json()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {f.name.rstrip("_"): _jsonable(getattr(value, f.name)) for f in fields(value)}
    return value


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    keyword = Keyword.FROM
    image: str
    stage_name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    """``command`` is the exec-form list, or one shell-form string (``shell_form``).

    ``mounts`` is None until expansion when a ``--mount`` spec uses variables.
    """

    keyword = Keyword.RUN
    command: tuple[str, ...]
    shell_form: bool = True
    files: tuple[InlineFile, ...] = ()
    mount_specs: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] | None = ()
    network: str | None = None
    security: str | None = None


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    keyword = Keyword.CMD
    command: tuple[str, ...]
    shell_form: bool = True


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    keyword = Keyword.ENTRYPOINT
    command: tuple[str, ...]
    shell_form: bool = True


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    keyword = Keyword.SHELL
    shell: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    keyword = Keyword.LABEL
    labels: tuple[KeyValue, ...]
    legacy: bool = False


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    keyword = Keyword.MAINTAINER
    maintainer: str


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    """Ports as written; after expansion each is ``<port>[-<end>][/tcp|udp|sctp]``."""

    keyword = Keyword.EXPOSE
    ports: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    keyword = Keyword.ENV
    env: tuple[KeyValue, ...]
    legacy: bool = False


@dataclass(frozen=True, kw_only=True)
class Add(Instruction):
    keyword = Keyword.ADD
    sources: tuple[str, ...]
    dest: str
    files: tuple[InlineFile, ...] = ()
    chown: str = ""
    chmod: str = ""
    link: bool = False
    keep_git_dir: bool | None = None
    checksum: str = ""
    unpack: bool | None = None
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Copy(Instruction):
    keyword = Keyword.COPY
    sources: tuple[str, ...]
    dest: str
    files: tuple[InlineFile, ...] = ()
    from_: str = ""
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    keyword = Keyword.VOLUME
    paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    keyword = Keyword.USER
    user: str


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    keyword = Keyword.WORKDIR
    path: str


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    keyword = Keyword.ARG
    args: tuple[ArgDef, ...]


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """``trigger`` runs in stages built FROM this image; ``expression`` is its text."""

    keyword = Keyword.ONBUILD
    trigger: Instruction
    expression: str


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    keyword = Keyword.STOPSIGNAL
    signal: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``test`` is Docker's form: ``("NONE",)``, ``("CMD", *argv)`` or ``("CMD-SHELL", s)``.

    Durations are nanoseconds (0: use the default), as in the image config.
    """

    keyword = Keyword.HEALTHCHECK
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


# --- the per-keyword parsers ----------------------------------------------------------
