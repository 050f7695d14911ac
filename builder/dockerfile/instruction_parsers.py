"""Syntax nodes -> typed instructions (stage two): one parser per keyword, in one table.

This stage checks what can be checked without values: argument counts, known flags (an
unknown flag is an error and suggests the nearest one), flag types, FROM's ``AS name``,
JSON-only SHELL, HEALTHCHECK options, ONBUILD triggers (no ONBUILD, FROM or MAINTAINER),
``--mount`` specs. :func:`parse_instruction` types one node; :func:`parse_dockerfile` a
whole :class:`~.syntax.SyntaxTree`. Both raise :class:`~.errors.DockerfileError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cas.units import parse_duration

from .errors import Problem, bad_flag_value, expected_arguments
from .flags import Flags
from .instructions import (
    Add,
    Arg,
    ArgDef,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    InlineFile,
    Instruction,
    KeyValue,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from .mounts import Mount, MountError, parse_mount
from .shell_words import GO_SPACE
from .syntax import Heredoc, Keyword, Node, SyntaxTree, parse_heredoc_marker

__all__ = ["PARSERS", "parse_dockerfile", "parse_instruction"]

# Where an instruction was and how it was written: every instruction's first fields.
Location = dict[str, Any]
InstructionParser = Callable[[Node, str, Location], Instruction]


def _flags(node: Node, file: str, **spec: type) -> dict[str, Any]:
    return Flags(node, file, dict(spec)).parse()


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


def _from(node: Node, file: str, loc: Location) -> From:
    f = _flags(node, file, platform=str)
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


def _run(node: Node, file: str, loc: Location) -> Run:
    kw = node.keyword
    f = _flags(node, file, mount=list, network=str, security=str)
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


def _cmd(node: Node, file: str, loc: Location) -> Cmd:
    _flags(node, file)
    command, shell_form = _command(node, file, empty_ok=True)
    return Cmd(command=command, shell_form=shell_form, **loc)


def _entrypoint(node: Node, file: str, loc: Location) -> Entrypoint:
    _flags(node, file)
    command, shell_form = _command(node, file, empty_ok=True)
    return Entrypoint(command=command, shell_form=shell_form, **loc)


def _shell(node: Node, file: str, loc: Location) -> Shell:
    _flags(node, file)
    if not node.args:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    if not node.json:
        raise node.error(Problem("SHELL requires the arguments to be in JSON form",
                                 'write SHELL ["executable", "parameters"]'), file=file)
    return Shell(shell=node.args, **loc)


def _label(node: Node, file: str, loc: Location) -> Label:
    _flags(node, file)
    return Label(labels=_kvs(node, file), legacy=node.legacy_kv, **loc)


def _env(node: Node, file: str, loc: Location) -> Env:
    _flags(node, file)
    return Env(env=_kvs(node, file), legacy=node.legacy_kv, **loc)


def _maintainer(node: Node, file: str, loc: Location) -> Maintainer:
    _flags(node, file)
    return Maintainer(maintainer=_one(node, file), **loc)


def _expose(node: Node, file: str, loc: Location) -> Expose:
    _flags(node, file)
    if not node.args:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    return Expose(ports=node.args, **loc)


def _add(node: Node, file: str, loc: Location) -> Add:
    f = _flags(node, file, chown=str, chmod=str, link=bool, **{"keep-git-dir": bool},
               checksum=str, unpack=bool, exclude=list)
    srcs, dest, files = _sources_and_dest(node, file)
    return Add(sources=srcs, dest=dest, files=files, chown=f.get("chown", ""),
               chmod=f.get("chmod", ""), link=f.get("link", False),
               keep_git_dir=f.get("keep-git-dir"), checksum=f.get("checksum", ""),
               unpack=f.get("unpack"), exclude=tuple(f.get("exclude", ())), **loc)


def _copy(node: Node, file: str, loc: Location) -> Copy:
    f = _flags(node, file, chown=str, chmod=str, link=bool, parents=bool, exclude=list,
               **{"from": str})
    srcs, dest, files = _sources_and_dest(node, file)
    return Copy(sources=srcs, dest=dest, files=files, from_=f.get("from", ""),
                chown=f.get("chown", ""), chmod=f.get("chmod", ""),
                link=f.get("link", False), parents=f.get("parents", False),
                exclude=tuple(f.get("exclude", ())), **loc)


def _volume(node: Node, file: str, loc: Location) -> Volume:
    _flags(node, file)
    if not node.args:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    paths = tuple(p.strip(GO_SPACE) for p in node.args)
    if any(not p for p in paths):
        raise node.error("VOLUME specified can not be an empty string", file=file)
    return Volume(paths=paths, **loc)


def _user(node: Node, file: str, loc: Location) -> User:
    _flags(node, file)
    return User(user=_one(node, file), **loc)


def _workdir(node: Node, file: str, loc: Location) -> Workdir:
    _flags(node, file)
    return Workdir(path=_one(node, file), **loc)


def _stopsignal(node: Node, file: str, loc: Location) -> StopSignal:
    _flags(node, file)
    return StopSignal(signal=_one(node, file), **loc)


def _arg(node: Node, file: str, loc: Location) -> Arg:
    _flags(node, file)
    if not node.args:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    defs = []
    for word in node.args:
        name, has_default, default = word.partition("=")
        if not name:
            raise node.error("ARG names can not be blank", file=file)
        defs.append(ArgDef(name, default if has_default else None))
    return Arg(args=tuple(defs), **loc)


def _onbuild(node: Node, file: str, loc: Location) -> Onbuild:
    _flags(node, file)
    if node.child is None:
        raise node.error(expected_arguments(node.keyword, "at least one argument"), file=file)
    trigger_kw = node.child.keyword
    if trigger_kw is Keyword.ONBUILD:
        raise node.error(Problem("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
                         file=file)
    if trigger_kw in (Keyword.FROM, Keyword.MAINTAINER):
        raise node.error(f"{trigger_kw} isn't allowed as an ONBUILD trigger", file=file)
    trigger = parse_instruction(node.child, file)
    expression = re.sub(r"(?i)^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", "", node.original)
    for doc in node.heredocs:
        expression += "\n" + doc.content + doc.name
    return Onbuild(trigger=trigger, expression=expression, **loc)


# Go's time.ParseDuration, as BuildKit reads HEALTHCHECK times: an optional sign, no days,
# no blanks, at most 2^63-1 ns (Docker cannot load a config holding more).
_GO_DURATION = re.compile(r"[+-]?(?:0|(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)",
                          re.ASCII)


def _go_duration(text: str) -> int:
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(text)
    ns = parse_duration(text.lstrip("+-"))
    if ns >= 2**63:
        raise ValueError(text)
    return -ns if text.startswith("-") else ns


def _healthcheck(node: Node, file: str, loc: Location) -> Healthcheck:
    kw = node.keyword
    f = _flags(node, file, interval=str, timeout=str, **{"start-period": str,
               "start-interval": str}, retries=str)
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
            ns = _go_duration(value)
        except ValueError:
            raise node.error(bad_flag_value(kw, name, value, "a duration such as 30s or 1m30s"),
                             file=file, near=f"--{name}") from None
        if ns < 0 or 0 < ns < 10**6:
            raise node.error(bad_flag_value(kw, name, value, "0 or at least 1ms"),
                             file=file, near=f"--{name}")
        times[name.replace("-", "_")] = ns
    retries = 0
    if "retries" in f:
        # strconv.ParseInt(value, 10, 32), as BuildKit reads it
        if not re.fullmatch(r"[+-]?[0-9]+", f["retries"]) or \
                int(f["retries"]) >= 2**31:
            raise node.error(bad_flag_value(kw, "retries", f["retries"], "a whole number "
                                            "below 2147483648"), file=file, near="--retries")
        retries = int(f["retries"])
        if retries < 0:
            raise node.error(bad_flag_value(kw, "retries", f["retries"], "0 or more"),
                             file=file, near="--retries")
    return Healthcheck(test=test, retries=retries, interval=times.get("interval", 0),
                       timeout=times.get("timeout", 0),
                       start_period=times.get("start_period", 0),
                       start_interval=times.get("start_interval", 0), **loc)


# One parser per keyword; a test checks that every Keyword has one.
PARSERS: dict[Keyword, InstructionParser] = {
    Keyword.FROM: _from,
    Keyword.RUN: _run,
    Keyword.CMD: _cmd,
    Keyword.ENTRYPOINT: _entrypoint,
    Keyword.SHELL: _shell,
    Keyword.LABEL: _label,
    Keyword.ENV: _env,
    Keyword.MAINTAINER: _maintainer,
    Keyword.EXPOSE: _expose,
    Keyword.ADD: _add,
    Keyword.COPY: _copy,
    Keyword.VOLUME: _volume,
    Keyword.USER: _user,
    Keyword.WORKDIR: _workdir,
    Keyword.STOPSIGNAL: _stopsignal,
    Keyword.ARG: _arg,
    Keyword.ONBUILD: _onbuild,
    Keyword.HEALTHCHECK: _healthcheck,
}


def parse_instruction(node: Node, file: str = "Dockerfile") -> Instruction:
    """Type one syntax node; raise :class:`DockerfileError` (located) if it is invalid."""
    loc: Location = {"start_line": node.start_line, "end_line": node.end_line,
                     "column": node.column, "original": node.original}
    return PARSERS[node.keyword](node, file, loc)


def parse_dockerfile(tree: SyntaxTree) -> tuple[Instruction, ...]:
    """Type every node of ``tree``, in order; the first invalid one raises."""
    return tuple(parse_instruction(n, tree.file) for n in tree.nodes)
