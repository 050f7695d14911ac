"""Untyped syntax nodes -> one typed, frozen instruction per Dockerfile line (stage two).

Each instruction class below holds the arguments *as written* (variables unexpanded;
:mod:`builder.stages` expands the instructions Docker expands). This stage checks what can
be checked without values: argument counts, known flags (an unknown flag is an error and
suggests the nearest one), flag types, FROM's ``AS name``, JSON-only SHELL, HEALTHCHECK
options, ONBUILD triggers (no ONBUILD, FROM or MAINTAINER), ``--mount`` specs.

:func:`parse_instruction` types one node; :func:`parse_dockerfile` types a whole
:class:`~builder.syntax.SyntaxTree`. Both raise :class:`~builder.errors.DockerfileError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .errors import Problem, bad_flag_value, expected_arguments
from .flags import Flags, parse_duration
from .mounts import Mount, MountError, parse_mount
from .syntax import Heredoc, Keyword, Node, SyntaxTree, parse_heredoc_marker

__all__ = [
    "Add", "Arg", "ArgDef", "Cmd", "Copy", "Entrypoint", "Env", "Expose", "From",
    "Healthcheck", "InlineFile", "Instruction", "KeyValue", "Label", "Maintainer", "Onbuild",
    "Run", "Shell", "StopSignal", "User", "Volume", "Workdir", "parse_dockerfile",
    "parse_duration", "parse_instruction",
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


_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
def _checked(mount: Mount | None) -> Mount:
    assert mount is not None  # parse_mount returns a Mount whenever it can expand
    return mount


def _one(node: Node, file: str) -> str:
    if len(node.args) != 1:
        raise node.error(expected_arguments(node.keyword, "exactly one argument",
                                            len(node.args)), file=file)
    return node.args[0]


def _inline_file(doc: Heredoc) -> InlineFile:
    data = re.sub(r"(?m)^\t+", "", doc.content) if doc.chomp else doc.content
    return InlineFile(doc.name, data, doc.expand, doc.chomp, doc.fd)


def _sources_and_dest(node: Node, file: str) -> tuple[tuple[str, ...], str,
                                                        tuple[InlineFile, ...]]:
    if len(node.args) < 2:
        raise node.error(Problem(
            f"{node.keyword} requires at least two arguments, but only "
            f"{len(node.args)} {'was' if len(node.args) == 1 else 'were'} provided",
            "give one or more sources and then a destination"), file=file)
    *srcs, dest = node.args
    docs = {d.name: d for d in node.heredocs}
    if not node.json and parse_heredoc_marker(dest) is not None:
        raise node.error(f"{node.keyword} cannot accept a heredoc as a destination", file=file)
    paths, files = [], []
    for src in srcs:
        marker = None if node.json else parse_heredoc_marker(src)
        if marker is not None and marker.name in docs:
            files.append(_inline_file(docs[marker.name]))
        else:
            paths.append(src)
    return tuple(paths), dest, tuple(files)


def _kvs(node: Node, file: str) -> tuple[KeyValue, ...]:
    if not node.args:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    pairs = []
    for key, value in zip(node.args[::2], node.args[1::2], strict=True):
        if not key:
            raise node.error(f"{node.keyword} names can not be blank", file=file)
        pairs.append(KeyValue(key, value))
    return tuple(pairs)


def _command(node: Node, file: str, *, empty_ok: bool) -> tuple[tuple[str, ...], bool]:
    if not node.args and not empty_ok:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    return node.args, not node.json


def parse_instruction(node: Node, file: str = "Dockerfile") -> Instruction:
    """Type one syntax node; raise :class:`DockerfileError` (located) if it is invalid."""
    kw = node.keyword
    loc: dict[str, Any] = {"start_line": node.start_line, "end_line": node.end_line,
                           "column": node.column, "original": node.original}

    def flags(**spec: type) -> dict[str, Any]:
        return Flags(node, file, dict(spec)).parse()

    if kw is Keyword.FROM:
        f = flags(platform=str)
        args = node.args
        if len(args) == 3 and args[1].lower() == "as":
            name = args[2].lower()
            if not _STAGE_NAME.match(name):
                raise node.error(Problem(
                    f"invalid name for build stage: {args[2]!r}",
                    "a name starts with a letter and holds only letters, digits, - _ ."),
                    file=file, near=args[2])
            return From(image=args[0], stage_name=name, platform=f.get("platform"), **loc)
        if len(args) != 1:
            raise node.error(Problem("FROM requires either one or three arguments",
                                     "write FROM <image> [AS <name>]"), file=file)
        return From(image=args[0], platform=f.get("platform"), **loc)
    if kw is Keyword.RUN:
        f = flags(mount=list, network=str, security=str)
        command, shell_form = _command(node, file, empty_ok=False)
        network, security = f.get("network"), f.get("security")
        if network is not None and network not in ("default", "none", "host"):
            raise node.error(bad_flag_value(kw, "network", network, "default, none or host"),
                             file=file, near="--network")
        if security is not None and security not in ("sandbox", "insecure"):
            raise node.error(bad_flag_value(kw, "security", security, "sandbox or insecure"),
                             file=file, near="--security")
        specs = tuple(f.get("mount", ()))
        mounts: tuple[Mount, ...] | None = None
        try:
            if any("$" in s for s in specs):
                for spec in specs:  # check what can be checked before expansion
                    parse_mount(spec, None)
            else:
                mounts = tuple(_checked(parse_mount(s)) for s in specs)
        except MountError as exc:
            raise node.error(exc.problem, file=file, near="--mount") from None
        files = tuple(_inline_file(d) for d in node.heredocs)
        return Run(command=command, shell_form=shell_form, files=files, mount_specs=specs,
                   mounts=mounts, network=network, security=security, **loc)
    if kw in (Keyword.CMD, Keyword.ENTRYPOINT):
        flags()
        command, shell_form = _command(node, file, empty_ok=True)
        cls = Cmd if kw is Keyword.CMD else Entrypoint
        return cls(command=command, shell_form=shell_form, **loc)
    if kw is Keyword.SHELL:
        flags()
        if not node.args:
            raise node.error(expected_arguments(kw, "at least one argument"), file=file)
        if not node.json:
            raise node.error(Problem("SHELL requires the arguments to be in JSON form",
                                     'write SHELL ["executable", "parameters"]'), file=file)
        return Shell(shell=node.args, **loc)
    if kw is Keyword.LABEL:
        flags()
        return Label(labels=_kvs(node, file), legacy=node.legacy_kv, **loc)
    if kw is Keyword.ENV:
        flags()
        return Env(env=_kvs(node, file), legacy=node.legacy_kv, **loc)
    if kw is Keyword.MAINTAINER:
        flags()
        return Maintainer(maintainer=_one(node, file), **loc)
    if kw is Keyword.EXPOSE:
        flags()
        if not node.args:
            raise node.error(expected_arguments(kw, "at least one argument"), file=file)
        return Expose(ports=node.args, **loc)
    if kw is Keyword.ADD:
        f = flags(chown=str, chmod=str, link=bool, **{"keep-git-dir": bool}, checksum=str,
                  unpack=bool, exclude=list)
        srcs, dest, files = _sources_and_dest(node, file)
        return Add(sources=srcs, dest=dest, files=files, chown=f.get("chown", ""),
                   chmod=f.get("chmod", ""), link=f.get("link", False),
                   keep_git_dir=f.get("keep-git-dir"), checksum=f.get("checksum", ""),
                   unpack=f.get("unpack"), exclude=tuple(f.get("exclude", ())), **loc)
    if kw is Keyword.COPY:
        f = flags(chown=str, chmod=str, link=bool, parents=bool, exclude=list,
                  **{"from": str})
        srcs, dest, files = _sources_and_dest(node, file)
        return Copy(sources=srcs, dest=dest, files=files, from_=f.get("from", ""),
                    chown=f.get("chown", ""), chmod=f.get("chmod", ""),
                    link=f.get("link", False), parents=f.get("parents", False),
                    exclude=tuple(f.get("exclude", ())), **loc)
    if kw is Keyword.VOLUME:
        flags()
        if not node.args:
            raise node.error(expected_arguments(kw, "at least one argument"), file=file)
        paths = tuple(p.strip() for p in node.args)
        if any(not p for p in paths):
            raise node.error("VOLUME specified can not be an empty string", file=file)
        return Volume(paths=paths, **loc)
    if kw is Keyword.USER:
        flags()
        return User(user=_one(node, file), **loc)
    if kw is Keyword.WORKDIR:
        flags()
        return Workdir(path=_one(node, file), **loc)
    if kw is Keyword.STOPSIGNAL:
        flags()
        return StopSignal(signal=_one(node, file), **loc)
    if kw is Keyword.ARG:
        flags()
        if not node.args:
            raise node.error(expected_arguments(kw, "at least one argument"), file=file)
        defs = []
        for word in node.args:
            name, has_default, default = word.partition("=")
            if not name:
                raise node.error("ARG names can not be blank", file=file)
            defs.append(ArgDef(name, default if has_default else None))
        return Arg(args=tuple(defs), **loc)
    if kw is Keyword.ONBUILD:
        flags()
        if node.child is None:
            raise node.error(expected_arguments(kw, "at least one argument"), file=file)
        trigger_kw = node.child.keyword
        if trigger_kw is Keyword.ONBUILD:
            raise node.error(Problem("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
                             file=file)
        if trigger_kw in (Keyword.FROM, Keyword.MAINTAINER):
            raise node.error(f"{trigger_kw} isn't allowed as an ONBUILD trigger", file=file)
        trigger = parse_instruction(node.child, file)
        expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original)
        for doc in node.heredocs:
            expression += "\n" + doc.content + doc.name
        return Onbuild(trigger=trigger, expression=expression, **loc)
    if kw is Keyword.HEALTHCHECK:
        return _healthcheck(node, file, loc)
    raise AssertionError(f"no parser for {kw}")  # Keyword and this table must agree


def _healthcheck(node: Node, file: str, loc: dict[str, Any]) -> Healthcheck:
    kw = node.keyword
    f = Flags(node, file, {"interval": str, "timeout": str, "start-period": str,
                            "start-interval": str, "retries": str}).parse()
    if not node.args:
        raise node.error(expected_arguments(kw, "at least one argument"), file=file)
    kind, args = node.args[0].upper(), node.args[1:]
    if kind == "NONE":
        if args:
            raise node.error("HEALTHCHECK NONE takes no arguments", file=file)
        return Healthcheck(test=("NONE",), **loc)
    if kind != "CMD":
        raise node.error(Problem(f"unknown type {node.args[0]!r} in HEALTHCHECK",
                                 "use HEALTHCHECK CMD <command> or HEALTHCHECK NONE"),
                         file=file)
    if not args:
        raise node.error("missing command after HEALTHCHECK CMD", file=file)
    test = ("CMD", *args) if node.json else ("CMD-SHELL", *args)
    times: dict[str, int] = {}
    for name in ("interval", "timeout", "start-period", "start-interval"):
        value = f.get(name, "")
        if not value:
            continue
        try:
            ns = parse_duration(value)
        except ValueError:
            raise node.error(bad_flag_value(kw, name, value, "a duration such as 30s or 1m30s"),
                             file=file, near=f"--{name}") from None
        if 0 < ns < 10**6:
            raise node.error(bad_flag_value(kw, name, value, "0 or at least 1ms"),
                             file=file, near=f"--{name}")
        times[name.replace("-", "_")] = ns
    retries = 0
    if "retries" in f:
        try:
            retries = int(f["retries"])
        except ValueError:
            raise node.error(bad_flag_value(kw, "retries", f["retries"], "a whole number"),
                             file=file, near="--retries") from None
        if retries < 0:
            raise node.error(bad_flag_value(kw, "retries", f["retries"], "0 or more"),
                             file=file, near="--retries")
    return Healthcheck(test=test, retries=retries, interval=times.get("interval", 0),
                       timeout=times.get("timeout", 0),
                       start_period=times.get("start_period", 0),
                       start_interval=times.get("start_interval", 0), **loc)


def parse_dockerfile(tree: SyntaxTree) -> tuple[Instruction, ...]:
    """Type every node of ``tree``, in order; the first invalid one raises."""
    return tuple(parse_instruction(n, tree.file) for n in tree.nodes)
