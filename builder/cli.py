"""The ``pybuild`` command: one root click group that each package extends.

``cas`` contributes ``pybuild storage ...``, ``registry`` contributes ``serve``,
``push``, ``pull``, ``copy`` and friends, ``builder`` contributes ``build`` and ``parse``.
The root lives here because ``builder`` is the top of the one-way dependency chain
(builder -> registry -> cas) and so is the one package allowed to import the others.

Each package names its commands as ``"module:attribute"`` strings (``COMMANDS`` in
``registry.cli`` and ``builder.commands``), and its line in ``pybuild --help`` as
``SUMMARIES``; a command's module is imported only when the command runs, so ``pybuild
pull`` does not pay for importing the builder and the server (about half a second), and
``pybuild --help`` takes 0.1 s instead of 0.9.

The root group is also the last error boundary (:mod:`builder.cli_errors`): an error no
command worded itself is printed as one ``Error: ...`` line, exit status 1. And it teaches
every command docker's boolean flag values (:func:`accept_flag_values`: ``--pull=false``).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import signal
import sys
import weakref
from typing import Any, NoReturn

import click

from registry.cli import COMMANDS as REGISTRY_COMMANDS
from registry.cli import JSON_ERRORS
from registry.cli import SUMMARIES as REGISTRY_SUMMARIES

from . import __version__
from .commands import COMMANDS as BUILDER_COMMANDS
from .commands import SUMMARIES as BUILDER_SUMMARIES

__all__ = ["COMMANDS", "SUMMARIES", "LazyGroup", "accept_flag_values", "main"]

COMMANDS: dict[str, str] = {
    **REGISTRY_COMMANDS,  # storage: cas.cli's group + the registry's retention and migrate
    **BUILDER_COMMANDS,
}
# Each command's line in ``pybuild --help``: listing them imports none of their modules
# (importing them all took most of a second).
SUMMARIES: dict[str, str] = {**REGISTRY_SUMMARIES, **BUILDER_SUMMARIES}


# click >= 8.2 raises this for a group run without a command (its help is the answer).
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_Never", (click.UsageError,), {}))


def _stdout_closed() -> NoReturn:
    """Exit quietly: stdout was closed early (``pybuild images | head -1``), nothing is
    left to say and no one to say it to. 141 (128 + SIGPIPE) is what a shell reports for
    any other CLI the closed pipe stops, and what ``set -o pipefail`` sees."""
    sys.stdout = click.utils.PacifyFlushWrapper(sys.stdout)  # type: ignore[operator]
    sys.exit(128 + signal.SIGPIPE)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use.

    ``lazy`` maps a command name to ``"module:attribute"``; the attribute must be a
    ``click.Command`` of that name (checked on import, so a wrong table fails loudly).
    ``summaries`` gives a lazy command's line in the group's help, so listing the
    commands imports none of them; a command without one is imported to be listed."""

    def __init__(self, *args: object, lazy: dict[str, str],
                 summaries: dict[str, str] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)
        self.summaries = dict(summaries or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.summaries and name not in self.commands:
                rows.append((name, self.summaries[name]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """click's main, but every error is one line: a usage error too (click prints
        the usage and a hint around it); an interrupt exits 130 after ``Aborted!``."""
        main: Any = super().main  # click's overloads do not take *args
        if not standalone_mode:
            return main(*args, standalone_mode=False, **kwargs)
        self._json_errors = False
        if _empty_storage(list((args[0] if args else kwargs.get("args")) or sys.argv[1:])):
            self._fail("--storage: an empty path would put the store in the current directory; "
                       "name the storage directory, or leave --storage out for the default "
                       "($PYBUILD_STORAGE or the XDG data dir)", 2)
        try:
            main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # a bare group: its help, as click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "pybuild"
            self._fail(f"{' '.join(exc.format_message().split())} (see '{where} --help')", exc.exit_code)
        except click.ClickException as exc:
            self._fail(' '.join(exc.format_message().split()), exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            self._error_event("interrupted", 130)
            sys.exit(130)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                _stdout_closed()
            raise
        sys.exit(0)

    def _fail(self, text: str, code: int) -> None:
        click.echo(f"Error: {text}", err=True)
        self._error_event(text, code)
        sys.exit(code)

    def _error_event(self, text: str, code: int) -> None:
        """The last event of a command run with ``--json`` that failed (the shape of
        ``build --progress json``'s ``error``): the line on stderr is for people."""
        if getattr(self, "_json_errors", False):
            import json  # loaded already by the command that took --json

            with contextlib.suppress(OSError):  # stdout closed: stderr has said it
                click.echo(json.dumps({"event": "error", "message": text, "exit_code": code}))

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            _stdout_closed()  # before click's main, which would exit 1
        except Exception as exc:
            from .cli_errors import describe

            text = describe(exc)
            if text is None:
                raise
            raise click.ClickException(text) from exc
        finally:
            self._json_errors = bool(ctx.meta.get(JSON_ERRORS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy:
            return command
        module, _, attr = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise RuntimeError(f"{self.lazy[cmd_name]} is not the click command {cmd_name!r}")
        accept_flag_values(command)  # --pull=false, as docker's flags take it
        if command.short_help is None and cmd_name in self.summaries:
            command.short_help = self.summaries[cmd_name]  # the same line, imported or not
        self.add_command(command)
        return command


# ``--flag=true`` and ``--flag=false`` for every boolean flag, as docker's flag parser
# (spf13/pflag) takes them: ``pybuild build --pull=false --rm=false`` runs as ``docker
# build`` does, ``--pull=false`` meaning "do not pull"; click takes a flag only bare. A
# flag's value is only ever given with ``=`` (``--pull false`` is the flag, then the
# argument ``false``), and the last occurrence wins (``--pull --pull=false``: no pull), as
# with pflag; the values are Go's ``strconv.ParseBool``'s.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_DONE: weakref.WeakSet[click.Command] = weakref.WeakSet()  # the commands already taught


def accept_flag_values(command: click.Command) -> None:
    """Let every boolean flag of ``command`` and of its subcommands also be given as
    ``--flag=true|false`` (``-q=false`` too), and a short option's value as ``-t=VALUE``
    (docker's flags take both)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_flag_values(sub)
    if command in _DONE:
        return
    _DONE.add(command)
    flags: dict[str, click.Option] = {}
    valued: set[str] = set()
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        if param.is_flag and param.is_bool_flag and param.expose_value:
            flags.update((opt, param) for opt in param.opts)
        elif not param.is_flag and not param.count:
            valued.update(param.opts)
    if not flags:
        return
    parse_args = command.parse_args

    def parse_with_values(ctx: click.Context, args: list[str]) -> list[str]:
        given: list[str] = []
        falses: dict[str, bool] = {}  # param name -> False, when its last occurrence is =false
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                given += args[i:]
                break
            if arg in valued and i + 1 < len(args):  # an option and its value: kept as is
                given += args[i:i + 2]
                i += 2
                continue
            if arg[:1] == "-" and arg[1:2] != "-" and arg[2:3] == "=" and arg[:2] in valued:
                given += [arg[:2], arg[3:]]  # -t=x: docker's -t x (click's would be "=x")
                i += 1
                continue
            name, eq, value = arg.partition("=")
            param = flags.get(name)
            if param is None or not name.startswith("-"):
                given.append(arg)
            elif not eq or value in _TRUE:
                given.append(name)
                falses.pop(param.name or "", None)
            elif value in _FALSE:
                falses[param.name or ""] = False
            else:
                raise click.BadParameter(
                    f"{value!r} is not a boolean: give {name}, {name}=true or {name}=false",
                    ctx=ctx, param=param)
            i += 1
        rest = parse_args(ctx, given)
        ctx.params.update(falses)
        return rest

    command.parse_args = parse_with_values  # type: ignore[method-assign]


def _empty_storage(argv: list[str]) -> bool:
    """Whether a command line gives ``--storage`` an empty value (an unset variable's):
    as a path that is the current directory."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--storage=" or (arg == "--storage" and argv[i + 1:i + 2] == [""]):
            return True
    return False


@click.group(cls=LazyGroup, lazy=COMMANDS, summaries=SUMMARIES,
             context_settings={"help_option_names": ["-h", "--help"]})
# The version from the package, not from its installed metadata: importlib.metadata
# alone took longer to import than the rest of `pybuild --version`.
@click.version_option(version=__version__, prog_name="pybuild")
def main() -> None:
    """pybuild: a daemonless image builder and a layer-deduplicating OCI registry."""
