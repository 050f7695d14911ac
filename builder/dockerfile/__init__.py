"""The Dockerfile front end: text -> nodes -> typed instructions -> a build plan.

Three stages, each importing only the one before it (as BuildKit's front end):

=====================  ===========================================  =====================
stage                  modules                                      produces
=====================  ===========================================  =====================
text -> nodes          ``syntax`` (+ ``line_parsers``)               :class:`SyntaxTree`
nodes -> typed         ``instructions`` (+ ``flags``, ``mounts``)    one dataclass each
typed -> stages        ``stages`` (+ ``shell_lex``)                  :class:`BuildPlan`
=====================  ===========================================  =====================

``errors`` words every problem (with file, line and column); ``parse_cmd`` is the
``pybuild parse`` command.
"""

# Names are imported from their modules on first use (PEP 562): a build that only needs
# an error class does not load the lexer and the planner with it.

import typing as _typing

from cas.lazy import lazy_attributes as _lazy_attributes

if _typing.TYPE_CHECKING:
    from .errors import DockerfileError, Problem
    from .instruction_parsers import parse_dockerfile, parse_instruction
    from .instructions import Instruction
    from .mounts import Mount, MountError, MountType, parse_mount
    from .shell_lex import Lexer, ShellLexError
    from .stages import BuildPlan, Stage, plan_build
    from .syntax import Keyword, Node, SyntaxTree, parse

_WHERE = {
    "DockerfileError": "errors",
    "Problem": "errors",
    "Instruction": "instructions",
    "parse_dockerfile": "instruction_parsers",
    "parse_instruction": "instruction_parsers",
    "Mount": "mounts",
    "MountError": "mounts",
    "MountType": "mounts",
    "parse_mount": "mounts",
    "Lexer": "shell_lex",
    "ShellLexError": "shell_lex",
    "BuildPlan": "stages",
    "Stage": "stages",
    "plan_build": "stages",
    "Keyword": "syntax",
    "Node": "syntax",
    "SyntaxTree": "syntax",
    "parse": "syntax",
}

__all__ = [
    "BuildPlan",
    "DockerfileError",
    "Instruction",
    "Keyword",
    "Lexer",
    "Mount",
    "MountError",
    "MountType",
    "Node",
    "Problem",
    "ShellLexError",
    "Stage",
    "SyntaxTree",
    "parse",
    "parse_dockerfile",
    "parse_instruction",
    "parse_mount",
    "plan_build",
]

__getattr__ = _lazy_attributes(__name__, _WHERE)
