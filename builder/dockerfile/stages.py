"""Typed instructions + build arguments + target -> expanded stages and their graph.

A pure function layer (no I/O) that the stage scheduler runs before building:

- **Global ARGs** (those before the first FROM) and the automatic platform args
  (``BUILDPLATFORM BUILDOS BUILDARCH BUILDVARIANT TARGETPLATFORM TARGETOS TARGETARCH
  TARGETVARIANT``, plus BuildKit's ``BUILDOSVERSION TARGETOSVERSION TARGETSTAGE``) are
  visible in FROM lines only. A stage sees a global ARG's value after re-declaring it
  (``ARG NAME`` without a default).
- ``--build-arg`` values override every ARG default of that name (global or stage).
- The predefined proxy args (``HTTP_PROXY``, ``HTTPS_PROXY``, ``FTP_PROXY``,
  ``NO_PROXY``, ``ALL_PROXY`` and their lower-case forms) need no ARG: given as build
  args they go to RUN's environment (:attr:`BuildPlan.proxy_env`) under both spellings,
  as BuildKit puts them there, and they do not count as unused.
- Of an ENV and an ARG of the same name, the later one gives later instructions their
  value, as in BuildKit (both set the build state's environment): ``ARG V`` then ``ENV
  V=x`` is x (Docker's reference example), but an ``ARG PYTHON_VERSION=3.12`` after an
  ENV of that name (the base image's too) is 3.12 until an ENV sets it again. The image's
  config keeps the ENV's value.
- Expanded, as Docker's reference lists: ADD, COPY, ENV, EXPOSE, FROM, LABEL,
  STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults, ``RUN --mount`` values and heredoc
  bodies whose marker is unquoted. Not expanded: RUN/CMD/ENTRYPOINT commands (the shell
  does that at run time), SHELL, HEALTHCHECK, MAINTAINER, ONBUILD triggers (they expand
  in the child build).
- A base's ONBUILD triggers (an image's ``OnBuild``, or the ONBUILD instructions of the
  stage it is built FROM) become the first instructions of the stage, and are expanded
  and scoped like its own, as BuildKit dispatches them: ``ONBUILD ARG`` takes its
  ``--build-arg``, ``ONBUILD COPY $SRC`` sees the base's ENV. Each instruction sees the values from *before* it: in
  ``ENV a=1 b=$a`` the ``$a`` is the old value.
- ``COPY --from`` cannot use variables (as BuildKit); it names an earlier or later stage
  (by name or index) or else an image. ``RUN --mount=from=`` likewise.

The environment and the ONBUILD triggers a base *image* brings are not known here; pass
them as ``image_env`` and ``image_onbuild`` when known (the stage scheduler does, after
pulling the image config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from registry.oci import Platform

from .errors import DockerfileError, Problem, with_suggestion
from .instruction_parsers import parse_dockerfile
from .instructions import (
    Add,
    Arg,
    Copy,
    Env,
    Expose,
    From,
    Instruction,
    KeyValue,
    Label,
    Onbuild,
    Run,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from .mounts import MountError, parse_mount
from .shell_lex import Lexer, ShellLexError
from .signals import check_signal
from .syntax import SyntaxTree, parse

__all__ = [
    "PREDEFINED_ARGS",
    "BuildPlan",
    "Stage",
    "parse_ports",
    "plan_build",
]

_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
PREDEFINED_ARGS = frozenset(name for base in _PROXY_NAMES for name in (base, base.lower()))


@dataclass(frozen=True)
class Stage:
    """One FROM section, expanded.

    ``base_stage`` is the index of the stage it builds on (FROM <stage>), else
    ``base_image`` names the image (``scratch`` included). ``depends_on`` lists the
    stages it needs (FROM, COPY --from, RUN --mount from=); ``images`` the other images it
    reads from. ``args`` and ``env`` are the values at the end of the stage, from the
    Dockerfile alone. ``instructions`` start with the base's ONBUILD triggers, if any;
    ``onbuild`` are the triggers this stage leaves to a stage built FROM it.
    """

    index: int
    name: str | None
    base_image: str | None
    base_stage: int | None
    platform: str | None
    instructions: tuple[Instruction, ...]
    depends_on: tuple[int, ...] = ()
    images: tuple[str, ...] = ()
    args: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    onbuild: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.name or f"stage-{self.index}"


@dataclass(frozen=True)
class BuildPlan:
    """Every stage, the target and the stages it needs (dependencies first)."""

    stages: tuple[Stage, ...]
    target: int
    needed: tuple[int, ...]
    global_args: Mapping[str, str]
    proxy_env: Mapping[str, str]
    unused_build_args: tuple[str, ...] = ()
    escape: str = "\\"


def _platform_args(build: Platform, target: Platform, stage: str) -> dict[str, str]:
    return {
        "BUILDPLATFORM": str(build), "BUILDOS": build.os, "BUILDOSVERSION": "",
        "BUILDARCH": build.architecture, "BUILDVARIANT": build.variant or "",
        "TARGETPLATFORM": str(target), "TARGETOS": target.os, "TARGETOSVERSION": "",
        "TARGETARCH": target.architecture, "TARGETVARIANT": target.variant or "",
        "TARGETSTAGE": stage,
    }


class _Expander:
    def __init__(self, escape: str, file: str) -> None:
        self.lex = Lexer(escape)
        self.raw = Lexer("\\", skip_process_quotes=True)  # heredoc bodies keep quotes
        self.file = file

    def fail(self, ins: Instruction, exc: Exception) -> DockerfileError:
        problem = exc.problem if isinstance(exc, MountError) else Problem(str(exc))
        return DockerfileError(problem, file=self.file, line=ins.start_line,
                               column=ins.column, end_line=ins.end_line)

    def word(self, ins: Instruction, text: str, env: Mapping[str, str]) -> str:
        try:
            return self.lex.process_word(text, env)
        except ShellLexError as exc:
            raise self.fail(ins, exc) from None

    def words(self, ins: Instruction, text: str, env: Mapping[str, str]) -> list[str]:
        try:
            return self.lex.process_words(text, env)
        except ShellLexError as exc:
            raise self.fail(ins, exc) from None

    def heredoc(self, ins: Instruction, text: str, env: Mapping[str, str]) -> str:
        try:
            return self.raw.process_word(text, env)
        except ShellLexError as exc:
            raise self.fail(ins, exc) from None


def plan_build(
    dockerfile: SyntaxTree | str,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    *,
    build_platform: Platform | None = None,
    target_platform: Platform | None = None,
    image_env: Mapping[str, Mapping[str, str]] | None = None,
    image_onbuild: Mapping[str, Sequence[str]] | None = None,
) -> BuildPlan:
    """Expand a Dockerfile's stages for one build; raise :class:`DockerfileError`."""
    tree = parse(dockerfile) if isinstance(dockerfile, str) else dockerfile
    instructions = parse_dockerfile(tree)
    build_args = dict(build_args or {})
    build_p = build_platform or Platform.host()
    target_p = target_platform or build_p
    ex = _Expander(tree.escape, tree.file)
    consumed: set[str] = set()

    # Split into the global preamble and the stages.
    preamble: list[Instruction] = []
    sections: list[list[Instruction]] = []
    for ins in instructions:
        if isinstance(ins, From):
            sections.append([ins])
        elif not sections:
            if not isinstance(ins, Arg):
                raise DockerfileError(
                    Problem(f"{ins.keyword} before the first FROM",
                            "only ARG may come before FROM; start the stage with FROM"),
                    file=tree.file, line=ins.start_line, column=ins.column)
            preamble.append(ins)
        else:
            sections[-1].append(ins)
    if not sections:
        raise DockerfileError(Problem("no FROM instruction", "add FROM <image>"),
                              file=tree.file, line=instructions[-1].end_line)

    names = [s[0].stage_name for s in sections]  # type: ignore[attr-defined]
    default_target = target or names[-1] or ""
    global_args = _platform_args(build_p, target_p, default_target or "default")
    for key in global_args:
        if key in build_args:
            global_args[key] = build_args[key]
            consumed.add(key)
    for arg_ins in preamble:
        assert isinstance(arg_ins, Arg)
        for d in arg_ins.args:
            if d.name in build_args:
                global_args[d.name] = build_args[d.name]
                consumed.add(d.name)
            elif d.default is not None:
                global_args[d.name] = ex.word(arg_ins, d.default, global_args)

    stages: list[Stage] = []
    for index, section in enumerate(sections):
        stages.append(_expand_stage(index, section, stages, len(sections), global_args,
                                    build_args, consumed, ex, image_env or {},
                                    image_onbuild or {}))
    stages = _link_later_stages(stages)

    if target:
        wanted = target.lower()
        matches = [s.index for s in stages if s.name == wanted]
        if not matches:
            raise DockerfileError(with_suggestion(
                f"target stage {target!r} could not be found", target,
                [s.name for s in stages if s.name]), file=tree.file)
        target_index = matches[0]
    else:
        target_index = len(stages) - 1
    needed = _needed(stages, target_index, tree.file)
    proxy = _proxy_env(build_args)
    unused = tuple(sorted(k for k in build_args
                          if k not in consumed and k not in PREDEFINED_ARGS))
    return BuildPlan(tuple(stages), target_index, needed, global_args, proxy, unused,
                     tree.escape)


def _proxy_env(build_args: Mapping[str, str]) -> dict[str, str]:
    """The proxy build args as RUN's environment: as BuildKit, under both spellings
    (``--build-arg HTTP_PROXY=x`` gives ``http_proxy=x`` too, which curl and apt read);
    a name given in both spellings keeps each value."""
    env: dict[str, str] = {}
    for upper in _PROXY_NAMES:
        given = [build_args[n] for n in (upper, upper.lower()) if n in build_args]
        if given:
            env[upper] = build_args.get(upper, given[0])
            env[upper.lower()] = build_args.get(upper.lower(), given[0])
    return env


def _find_stage(ref: str, stages: list[Stage]) -> int | None:
    if ref.isdigit():
        return int(ref) if int(ref) < len(stages) else None
    for s in stages:
        if s.name == ref.lower():
            return s.index
    return None


def _expand_stage(
    index: int, section: list[Instruction], earlier: list[Stage], stage_count: int,
    global_args: Mapping[str, str], build_args: Mapping[str, str], consumed: set[str],
    ex: _Expander, image_env: Mapping[str, Mapping[str, str]],
    image_onbuild: Mapping[str, Sequence[str]],
) -> Stage:
    head = section[0]
    assert isinstance(head, From)
    image = ex.word(head, head.image, global_args)
    if not image:
        raise ex.fail(head, ValueError(f"base name ({head.image}) should not be blank"))
    plat = ex.word(head, head.platform, global_args) if head.platform else None
    if head.platform and not plat:
        raise ex.fail(head, ValueError(f"empty platform value from expression {head.platform}"))
    base_stage = None
    for s in earlier:
        if s.name and s.name == image.lower():
            base_stage = s.index
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    if base_stage is not None:
        args.update(earlier[base_stage].args)
        env.update(earlier[base_stage].env)
    else:
        env.update(image_env.get(image, {}))
    deps: set[int] = {base_stage} if base_stage is not None else set()
    images: list[str] = []
    out: list[Instruction] = [replace(head, image=image, platform=plat)]
    triggers = earlier[base_stage].onbuild if base_stage is not None \
        else tuple(image_onbuild.get(image, ()))
    body = [*(_trigger(t, head, ex.file) for t in triggers), *section[1:]]

    # What a word of the next instruction sees: the later of an ENV and an ARG of a name.
    # Kept up to date in place (copying it per instruction made long files quadratic).
    scope = {**args, **env}
    for ins in body:
        if isinstance(ins, Arg):
            defs = []
            for d in ins.args:
                value: str | None
                if d.name in build_args:
                    value = build_args[d.name]
                    consumed.add(d.name)
                elif d.default is not None:
                    value = ex.word(ins, d.default, scope)
                else:
                    value = global_args.get(d.name)
                if value is not None:
                    args[d.name] = value
                    scope[d.name] = value
                defs.append(replace(d, default=value))
            out.append(replace(ins, args=tuple(defs)))
            continue
        if isinstance(ins, Env):
            pairs = tuple(KeyValue(ex.word(ins, kv.key, scope), ex.word(ins, kv.value, scope))
                          for kv in ins.env)
            env.update((kv.key, kv.value) for kv in pairs)
            scope.update((kv.key, kv.value) for kv in pairs)
            out.append(replace(ins, env=pairs))
            continue
        if isinstance(ins, Label):
            out.append(replace(ins, labels=tuple(
                KeyValue(ex.word(ins, kv.key, scope), ex.word(ins, kv.value, scope))
                for kv in ins.labels)))
        elif isinstance(ins, (Add, Copy)):
            changes: dict[str, object] = {
                "sources": tuple(ex.word(ins, s, scope) for s in ins.sources),
                "dest": ex.word(ins, ins.dest, scope),
                "chown": ex.word(ins, ins.chown, scope),
                "chmod": ex.word(ins, ins.chmod, scope),
                "files": tuple(replace(f, data=ex.heredoc(ins, f.data, scope))
                               if f.expand else f for f in ins.files),
            }
            if isinstance(ins, Add):
                changes["checksum"] = ex.word(ins, ins.checksum, scope)
            else:
                _source_ref(ins, ins.from_, earlier, stage_count, deps, images, ex)
            out.append(replace(ins, **changes))  # type: ignore[arg-type]
        elif isinstance(ins, Expose):
            ports = tuple(p for w in ins.ports for p in ex.words(ins, w, scope))
            try:
                for p in ports:
                    parse_ports(p)
            except ValueError as exc:
                raise ex.fail(ins, exc) from None
            out.append(replace(ins, ports=ports))
        elif isinstance(ins, StopSignal):
            signal = ex.word(ins, ins.signal, scope)
            try:
                check_signal(signal)
            except ValueError as exc:
                raise ex.fail(ins, exc) from None
            out.append(replace(ins, signal=signal))
        elif isinstance(ins, User):
            out.append(replace(ins, user=ex.word(ins, ins.user, scope)))
        elif isinstance(ins, Workdir):
            out.append(replace(ins, path=ex.word(ins, ins.path, scope)))
        elif isinstance(ins, Volume):
            out.append(replace(ins, paths=tuple(ex.word(ins, p, scope) for p in ins.paths)))
        elif isinstance(ins, Run):
            def expand(value: str, ins: Instruction = ins, scope: dict[str, str] = scope) -> str:
                return ex.word(ins, value, scope)

            try:
                mounts = tuple(m for s in ins.mount_specs if (m := parse_mount(s, expand)))
            except (MountError, ShellLexError) as exc:
                raise ex.fail(ins, exc) from None
            for m in mounts:
                if m.from_:
                    _source_ref(ins, m.from_, earlier, stage_count, deps, images, ex)
            out.append(replace(ins, mounts=mounts))
        else:
            out.append(ins)
    onbuild = tuple(ins.expression for ins in section[1:] if isinstance(ins, Onbuild))
    return Stage(index, head.stage_name, None if base_stage is not None else image,
                 base_stage, plat, tuple(out), tuple(sorted(deps)), tuple(images),
                 dict(args), dict(env), onbuild)


def _trigger(text: str, head: From, file: str) -> Instruction:
    """One ONBUILD trigger of the base, typed; located at the FROM that runs it."""
    try:
        ins = parse_dockerfile(parse(f"FROM scratch\n{text}\n"))[1]
    except (DockerfileError, IndexError) as exc:
        reason = exc.message if isinstance(exc, DockerfileError) else "empty"
        raise DockerfileError(
            Problem(f"ONBUILD trigger {text!r} of the base image: {reason}",
                    "fix that ONBUILD line in the base image's Dockerfile and rebuild it"),
            file=file, line=head.start_line, end_line=head.end_line) from None
    return replace(ins, start_line=head.start_line, end_line=head.end_line,
                   column=head.column)


def _source_ref(ins: Instruction, ref: str, earlier: list[Stage], stage_count: int,
                deps: set[int], images: list[str], ex: _Expander) -> None:
    """Record a COPY --from / mount from= reference (later stages are linked after)."""
    if not ref:
        return
    if ex.lex.process_word(ref, {}) != ref:
        raise ex.fail(ins, ValueError(
            "variable expansion is not supported for --from; define a new stage with "
            "FROM using an ARG from the global scope instead"))
    if ref.isdigit() and int(ref) >= stage_count:
        raise ex.fail(ins, ValueError(
            f"invalid stage index {ref}: this Dockerfile has stages 0 to {stage_count - 1}"))
    found = _find_stage(ref, earlier)
    if found is not None:
        deps.add(found)
    elif ref not in images:
        images.append(ref)


def _link_later_stages(stages: list[Stage]) -> list[Stage]:
    """References to stages defined further down were taken for images; fix them."""
    names = {s.name: s.index for s in stages if s.name}
    out = []
    for s in stages:
        later = {names[r.lower()] for r in s.images if r.lower() in names}
        later |= {int(r) for r in s.images if r.isdigit() and int(r) < len(stages)}
        if later:
            keep = tuple(r for r in s.images
                         if r.lower() not in names and not (r.isdigit() and int(r) < len(stages)))
            s = replace(s, depends_on=tuple(sorted(set(s.depends_on) | later)), images=keep)
        out.append(s)
    return out


def _needed(stages: list[Stage], target: int, file: str) -> tuple[int, ...]:
    """The target's stages in build order (dependencies first); cycles are errors."""
    order: list[int] = []
    state: dict[int, str] = {}

    def visit(i: int, path: tuple[int, ...]) -> None:
        if state.get(i) == "done":
            return
        if state.get(i) == "active":
            raise DockerfileError(Problem(
                "circular dependency detected on stage: " + stages[i].display_name,
                "remove the COPY --from or mount that points back"), file=file)
        state[i] = "active"
        for dep in stages[i].depends_on:
            visit(dep, (*path, i))
        state[i] = "done"
        order.append(i)

    visit(target, ())
    return tuple(order)


def parse_ports(spec: str) -> list[str]:
    """``80``, ``80/udp``, ``8000-8002/tcp`` -> ``["80/tcp"]``... (one entry per port)."""
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto {proto!r} in port {spec!r}: expected tcp, udp or sctp")
    if ":" in port:  # ip:hostPort:containerPort publishes; only the container port counts
        port = port.rsplit(":", 1)[1]
    start_s, _, end_s = port.partition("-")
    try:
        start = int(start_s)
        end = int(end_s) if end_s else start
    except ValueError:
        raise ValueError(f"invalid port {spec!r}: expected <port>[-<end>][/<proto>]") from None
    if not (0 <= start <= 65535 and 0 <= end <= 65535) or end < start:
        raise ValueError(f"invalid port range {spec!r}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]
