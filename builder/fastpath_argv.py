"""The ``build`` argv as the fast path (:mod:`builder.fastpath`) understands it.

Only ``os`` is imported: this runs before click, on every ``pybuild`` command.
"""

from __future__ import annotations

import os

__all__ = ["Invocation", "parse_argv"]

_VALUED = {"-f": "file", "--file": "file", "-t": "tag", "--tag": "tag",
           "--build-arg": "build-arg", "--target": "target", "--label": "label",
           "--network": "network", "--progress": "progress", "--iidfile": "iidfile",
           "--metadata-file": "metadata-file", "--compression": "compression",
           "--source-date-epoch": "source-date-epoch", "--storage": "storage",
           "--platform": "platform", "--differ": "differ", "--allow": "allow",
           # values only, in the argv the fingerprint holds (--annotation changes the
           # digest the record keeps; the RUN options matter only to steps that run)
           "--annotation": "annotation", "--add-host": "add-host", "--shm-size": "shm-size",
           "--ulimit": "ulimit"}
# --flag=VALUE: the values builder.cli takes as true and as false (strconv.ParseBool's)
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_FLAGS = {"--no-cache": "no-cache", "--explain": "explain", "-q": "quiet", "--quiet": "quiet",
          # the classic builder's, which a build ignores (builder.build_cmd)
          "--rm": "ignored", "--force-rm": "ignored", "--compress": "ignored"}
# Not here, so never fast-pathed: --push, --output, --load, --cache-to (each writes
# somewhere a replay would not), --pull (asks the registry for a newer base), --cache-from
# (a remote cache), --build-context and --secret/--ssh (files and sockets the fingerprint
# does not cover, which the normal path checks).


class Invocation:
    """A ``build`` argv understood well enough for the fast path.

    A plain class, not a frozen dataclass: ``dataclasses`` imports ``inspect`` (~5 ms),
    an eighth of the whole fast path."""

    def __init__(self, argv: list[str], opts: dict[str, list[str]], context: str) -> None:
        self.argv = argv
        self.opts = opts
        self.context = context

    def one(self, name: str) -> str | None:
        values = self.opts.get(name)
        return values[-1] if values else None

    @property
    def key_argv(self) -> list[str]:
        """The argv the fingerprint is filed under (``--no-cache`` removed)."""
        return [a for a in self.argv if a != "--no-cache" and not (
            a.startswith("--no-cache=") and a.partition("=")[2] in _TRUE)]

    @property
    def storage(self) -> str:
        given = self.one("storage") or os.environ.get("PYBUILD_STORAGE")
        if given:
            return os.path.abspath(given)
        xdg = os.environ.get("XDG_DATA_HOME")
        base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.abspath(os.path.join(base, "pybuild"))

    @property
    def dockerfile_named(self) -> str:
        """The Dockerfile as named (its ``.dockerignore`` is named after it)."""
        return os.path.abspath(self.one("file") or os.path.join(self.context, "Dockerfile"))

    @property
    def dockerfile(self) -> str:
        """The file the build reads (``dockerfile`` for a missing ``Dockerfile``, as
        :func:`builder.build.lowercase_fallback`)."""
        path = self.dockerfile_named
        if os.path.basename(path) == "Dockerfile" and not os.path.exists(path):
            lower = os.path.join(os.path.dirname(path), "dockerfile")
            if os.path.isfile(lower):
                return lower
        return path


def parse_argv(argv: list[str]) -> Invocation | None:
    """``argv`` (without the program) as a build the fast path may answer, else None.

    It takes the forms the click CLI takes, with the same meaning: ``--opt VALUE``,
    ``--opt=VALUE``, ``-tVALUE``, ``-t=VALUE`` (as docker's ``-t=x``: builder.cli), short
    options run together (``-qt x``), ``--flag=true|false`` and ``--`` before CONTEXT."""
    if len(argv) < 2 or argv[0] != "build":
        return None
    opts: dict[str, list[str]] = {}
    positional: list[str] = []
    i = 1
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if a == "--":
            positional += argv[i + 1:]
            break
        if a in _FLAGS:
            opts.setdefault(_FLAGS[a], []).append("1")
        elif a in _VALUED:
            if i + 1 >= len(argv):
                return None
            opts.setdefault(_VALUED[a], []).append(argv[i + 1])
            i += 1
        elif eq and name in _FLAGS:  # --no-cache=false: the last occurrence wins
            if value in _TRUE:
                opts.setdefault(_FLAGS[name], []).append("1")
            elif value in _FALSE:
                opts.pop(_FLAGS[name], None)
            else:
                return None  # the normal path says it is no boolean
        elif a.startswith("--") and eq and name in _VALUED:
            opts.setdefault(_VALUED[name], []).append(value)
        elif a.startswith("-") and not a.startswith("--") and len(a) > 2:
            taken = _short_cluster(argv, i, opts)
            if taken is None:
                return None
            i += taken
        elif a.startswith("-"):
            return None  # --push, --output, --secret, --ssh, --help, "-", unknown
        else:
            positional.append(a)
        i += 1
    if len(positional) != 1 or "://" in positional[0] or "-" in opts.get("file", []):
        return None  # a URL context, or a Dockerfile on stdin
    progress = opts.get("progress", ["auto"])[-1]
    if progress not in ("auto", "plain", "tty", "json", "quiet"):
        return None
    if "quiet" in opts:
        if progress not in ("auto", "quiet"):
            return None  # the normal path refuses -q with another --progress
        opts["progress"] = ["quiet"]  # as the normal path: -q is --progress quiet
    return Invocation(list(argv), opts, positional[0])


def _short_cluster(argv: list[str], i: int, opts: dict[str, list[str]]) -> int | None:
    """Short options run together in ``argv[i]`` (``-qtx``, ``-qt x``, ``-fD``, ``-t=x``),
    into ``opts``: how many further args they took (their value), None for one not known."""
    a = argv[i]
    for j in range(1, len(a)):
        opt = "-" + a[j]
        if opt in _FLAGS:
            opts.setdefault(_FLAGS[opt], []).append("1")
        elif opt in _VALUED:
            rest = a[j + 1:]
            if j == 1 and rest.startswith("="):
                rest = rest[1:]  # -t=x is -t x (builder.cli), -qt=x is -q -t =x
            elif not rest:
                if i + 1 >= len(argv):
                    return None
                opts.setdefault(_VALUED[opt], []).append(argv[i + 1])
                return 1
            opts.setdefault(_VALUED[opt], []).append(rest)
            return 0
        else:
            return None
    return 0
