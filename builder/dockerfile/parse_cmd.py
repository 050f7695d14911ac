"""``pybuild parse``: show how a Dockerfile parses (and, on request, expands).

Without ``--build-arg``/``--target``/``--expand`` it prints every instruction: its line
range, keyword, flags and arguments as parsed (variables unexpanded). With any of them it
prints the stages after ARG/ENV expansion, what each depends on and which stages the
target needs. ``--json`` prints the same as one JSON document. A bad Dockerfile prints
its located error on stderr and exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import DockerfileError
from .instruction_parsers import parse_dockerfile
from .instructions import Instruction
from .stages import BuildPlan, plan_build
from .syntax import Node, SyntaxTree, parse

__all__ = ["parse_command", "plan_to_json", "tree_to_json"]


def _node_json(node: Node, typed: Instruction) -> dict[str, Any]:
    out: dict[str, Any] = {
        "instruction": str(node.keyword),
        "flags": list(node.flags),
        "args": list(node.args),
        "json": node.json,
        "lines": [node.start_line, node.end_line],
    }
    if node.child is not None:
        out["trigger"] = {"instruction": str(node.child.keyword),
                          "flags": list(node.child.flags), "args": list(node.child.args)}
    if node.heredocs:
        out["heredocs"] = [{"name": h.name, "content": h.content, "expand": h.expand,
                            "chomp": h.chomp} for h in node.heredocs]
    out["parsed"] = typed.to_json()
    return out


def tree_to_json(tree: SyntaxTree) -> dict[str, Any]:
    """The document ``pybuild parse --json`` prints for an unexpanded Dockerfile."""
    typed = parse_dockerfile(tree)
    return {
        "file": tree.file,
        "escape": tree.escape,
        "directives": {d.name: d.value for d in tree.directives},
        "instructions": [_node_json(n, t) for n, t in zip(tree.nodes, typed, strict=True)],
        "warnings": [{"line": w.line, "message": w.message} for w in tree.warnings],
    }


def plan_to_json(plan: BuildPlan) -> dict[str, Any]:
    """The document ``pybuild parse --json --expand`` prints."""
    return {
        "target": plan.target,
        "needed": list(plan.needed),
        "global_args": dict(plan.global_args),
        "proxy_env": dict(plan.proxy_env),
        "unused_build_args": list(plan.unused_build_args),
        "stages": [
            {
                "index": s.index, "name": s.name, "base_image": s.base_image,
                "base_stage": s.base_stage, "platform": s.platform,
                "depends_on": list(s.depends_on), "images": list(s.images),
                "instructions": [i.to_json() for i in s.instructions],
            }
            for s in plan.stages
        ],
    }


def _node_line(node: Node) -> str:
    parts = [str(node.keyword), *node.flags]
    if node.child is not None:
        parts += [str(node.child.keyword), *node.child.flags]
        args = node.child.args
    else:
        args = node.args
    parts.append(json.dumps(list(args), ensure_ascii=False))
    return f"{node.start_line:>4}-{node.end_line:<4} " + " ".join(parts)


def _print_plan(plan: BuildPlan) -> None:
    for s in plan.stages:
        mark = "*" if s.index == plan.target else ("+" if s.index in plan.needed else " ")
        base = f"stage {s.base_stage}" if s.base_stage is not None else s.base_image
        deps = ", ".join(plan.stages[d].display_name for d in s.depends_on) or "-"
        click.echo(f"{mark} stage {s.index} {s.display_name}: from {base}; needs {deps}")
        for ins in s.instructions[1:]:
            fields = {k: v for k, v in ins.to_json().items() if k not in ("instruction", "lines")}
            click.echo(f"    {ins.start_line:>4} {ins.keyword} "
                       f"{json.dumps(fields, ensure_ascii=False)}")
    click.echo(f"target: {plan.stages[plan.target].display_name}; builds: "
               + ", ".join(plan.stages[i].display_name for i in plan.needed))
    if plan.unused_build_args:
        click.echo("warning: build args not consumed: " + ", ".join(plan.unused_build_args))


def _build_arg(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
               ) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not key or not sep:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", ctx=ctx, param=param)
        out[key] = value
    return out


@click.command("parse")
@click.option("-f", "--file", "path", default="Dockerfile", show_default=True,
              help="Dockerfile to parse ('-' reads standard input).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--build-arg", "build_args", multiple=True, callback=_build_arg,
              metavar="KEY=VALUE", help="Set a build argument (implies --expand).")
@click.option("--target", default=None, help="Stage to build (implies --expand).")
@click.option("--expand", is_flag=True, help="Expand ARG/ENV and show the stage graph.")
def parse_command(path: str, as_json: bool, build_args: dict[str, str], target: str | None,
                  expand: bool) -> None:
    """Parse a Dockerfile and print its instructions (or its expanded stages)."""
    try:
        if path == "-":
            text, name = sys.stdin.read(), "<stdin>"
        else:
            text, name = Path(path).read_bytes().decode("utf-8", "replace"), path
    except OSError as exc:
        click.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
        sys.exit(1)
    try:
        tree = parse(text, name)
        if expand or build_args or target:
            plan = plan_build(tree, build_args, target)
            if as_json:
                click.echo(json.dumps(plan_to_json(plan), indent=2, ensure_ascii=False))
            else:
                _print_plan(plan)
            return
        doc = tree_to_json(tree)
    except DockerfileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    for w in tree.warnings:
        click.echo(f"warning: {name}:{w.line}: {w.message}", err=True)
    for node in tree.nodes:
        click.echo(_node_line(node))
