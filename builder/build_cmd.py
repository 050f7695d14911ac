"""``pybuild build``: docker build's words over :func:`builder.build.run_build`."""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
import stat
import sys
from pathlib import Path

import click

from cas.location import check_owner, default_storage_dir
from registry.client.refs import InvalidReference, parse_image_ref
from registry.oci import Platform

from .annotations import AnnotationError, parse_annotations
from .autogc import ENV as GC_ENV
from .autogc import bound_option
from .build import BuildOptions, run_build, target_platforms
from .cache.spec import CacheSpec, CacheSpecError, parse_cache_specs
from .classic_flags import classic_builder_flags, warn_classic_flags
from .context import ContextError, IgnoreFileError
from .contexts import BuildContextError, NamedContext, context_key, parse_build_context
from .dockerfile.errors import DockerfileError
from .fastpath import Recorder, progress_events
from .interrupt import Interrupted, run_until_signal
from .layers.errors import LayerError
from .outputs import ExportError, Output, OutputError, parse_output
from .progress import BuildProgress, mode_from_env
from .publish import PublishError
from .sandbox.userns import become_root
from .ssh_keys import KeyAgentError, is_private_key
from .steps.common import BuildError

__all__ = ["build", "finished"]

# True once a build has finished and closed everything: ``python -m builder`` then exits
# without the interpreter's teardown (builder/__main__.py).
finished = False


def _kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint=what)
        out[k] = val if eq else ""
    return out


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    """``--build-arg K=V``; a bare ``K`` takes $K, and is left out when $K is unset (so the
    Dockerfile's default stays), as docker build does."""
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint="--build-arg")
        if eq:
            out[k] = val
        elif (env := os.environ.get(k)) is not None:
            out[k] = env
    return out


def _secrets(values: tuple[str, ...]) -> dict[str, Path | bytes]:
    """``--secret`` as buildx reads it: ``id=NAME`` plus ``src=FILE`` (``type=file``) or
    ``env=VAR`` (``type=env``; ``type=env,src=VAR`` too). With neither, the variable
    named NAME if it is set, else the file NAME (BuildKit's secrets provider). A
    variable's value is held in memory: secret id -> file path, or the value itself."""
    out: dict[str, Path | bytes] = {}
    for v in values:
        try:
            fields = next(csv.reader([v], strict=True))
        except (csv.Error, StopIteration):
            raise click.BadParameter(f"{v!r}: use id=NAME,src=FILE or id=NAME,env=VAR",
                                     param_hint="--secret") from None
        attrs: dict[str, str] = {}
        for f in fields:
            key, eq, value = f.partition("=")
            key = key.strip().lower()
            if not eq:
                raise click.BadParameter(f"{f!r} is not KEY=VALUE: use id=NAME,src=FILE or "
                                         "id=NAME,env=VAR", param_hint="--secret")
            if key not in ("type", "id", "src", "source", "env"):
                raise click.BadParameter(f"unexpected key {key!r} in {f!r}: use id, src, env "
                                         "or type", param_hint="--secret")
            attrs["src" if key == "source" else key] = value
        kind, sid = attrs.get("type", ""), attrs.get("id", "")
        src, env = attrs.get("src", ""), attrs.get("env", "")
        if kind not in ("", "file", "env"):
            raise click.BadParameter(f"type={kind}: use type=file or type=env",
                                     param_hint="--secret")
        if kind == "env" and not env:
            env, src = src, ""
        if not sid:
            raise click.BadParameter(f"{v!r}: id= is missing: use id=NAME,src=FILE or "
                                     "id=NAME,env=VAR", param_hint="--secret")
        if not src and not env:
            if sid in os.environ:
                env = sid
            else:
                src = sid
        if env:
            found = os.environ.get(env)
            if found is None:
                raise click.BadParameter(f"id={sid}: environment variable {env} is not set",
                                         param_hint="--secret")
            out[sid] = found.encode()
            continue
        if not Path(src).is_file():
            raise click.BadParameter(f"{src}: no such file", param_hint="--secret")
        out[sid] = Path(src)
    return out


def _ssh(values: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, tuple[Path, ...]]]:
    """``--ssh default`` ($SSH_AUTH_SOCK), ``--ssh ID=SOCKET`` or ``--ssh ID=KEY[,KEY...]``
    (private key files, served by an agent of the build's own, as BuildKit does) ->
    (id -> agent socket, id -> key files)."""
    sockets: dict[str, Path] = {}
    keys: dict[str, tuple[Path, ...]] = {}
    for v in values:
        sid, eq, src = v.partition("=")
        if not sid:
            raise click.BadParameter(f"{v!r}: use default[=SOCKET|KEY] or ID=SOCKET|KEY[,KEY]",
                                     param_hint="--ssh")
        if not eq:
            src = os.environ.get("SSH_AUTH_SOCK", "")
            if not src:
                raise click.BadParameter(f"{v!r}: SSH_AUTH_SOCK is not set; start an agent "
                                         f"(ssh-agent), or give its socket or a key file: "
                                         f"{sid}=SOCKET|KEY", param_hint="--ssh")
        paths = src.split(",") if eq else [src]
        files = []
        for path in paths:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                raise click.BadParameter(f"{path}: no such agent socket or key file",
                                         param_hint="--ssh") from None
            if stat.S_ISSOCK(mode) and len(paths) == 1:
                sockets[sid] = Path(path)
                break
            if not stat.S_ISREG(mode) or not is_private_key(Path(path)):
                raise click.BadParameter(f"{path} is neither an SSH agent's socket nor a "
                                         "private key file", param_hint="--ssh")
            files.append(Path(path))
        if files:
            keys[sid] = tuple(files)
    return sockets, keys


def _add_hosts(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``--add-host NAME:IP`` (or ``NAME=IP``) -> (name, ip) pairs for /etc/hosts."""
    out = []
    for v in values:
        sep = "=" if "=" in v else ":"
        name, _, ip = v.partition(sep)
        ip = ip.removeprefix("[").removesuffix("]")
        if ip == "host-gateway":
            raise click.BadParameter(f"{v!r}: host-gateway is not supported (RUN steps use the "
                                     "host's network): give the address", param_hint="--add-host")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise click.BadParameter(f"{v!r}: expected NAME:IP, such as db.internal:10.0.0.5",
                                     param_hint="--add-host") from None
        if not name or any(c.isspace() for c in name):
            raise click.BadParameter(f"{v!r}: expected NAME:IP, such as db.internal:10.0.0.5",
                                     param_hint="--add-host")
        out.append((name, ip))
    return tuple(out)


_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)


def _shm_size(value: str | None) -> int | None:
    """``--shm-size 64m``: bytes, binary units, as Docker's RAMInBytes reads it."""
    if value is None:
        return None
    m = _SIZE.match(value.strip())
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{value!r}: expected a size such as 64m, 1g or 67108864",
                                 param_hint="--shm-size")
    unit = (m.group(2) or "").lower()
    return int(float(m.group(1)) * 1024 ** ("kmgtp".find(unit) + 1 if unit else 0))


_ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
            "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def _ulimits(values: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """``--ulimit NAME=SOFT[:HARD]`` (-1: unlimited), as Docker's ParseUlimit reads it."""
    out: dict[str, tuple[str, int, int]] = {}
    for v in values:
        name, eq, limits = v.partition("=")
        if not eq or name not in _ULIMITS:
            raise click.BadParameter(f"{v!r}: expected NAME=SOFT[:HARD] with NAME one of "
                                     f"{', '.join(_ULIMITS)}", param_hint="--ulimit")
        soft_text, colon, hard_text = limits.partition(":")
        try:
            soft = int(soft_text)
            hard = int(hard_text) if colon else soft
        except ValueError:
            raise click.BadParameter(f"{v!r}: limits are whole numbers (-1: unlimited), such "
                                     "as nofile=1024:2048", param_hint="--ulimit") from None
        if soft < -1 or hard < -1:
            raise click.BadParameter(f"{v!r}: a limit is -1 (unlimited) or at least 0",
                                     param_hint="--ulimit")
        if hard != -1 and (soft == -1 or soft > hard):
            raise click.BadParameter(f"{v!r}: the soft limit must not be above the hard limit",
                                     param_hint="--ulimit")
        out[name] = (name, soft, hard)
    return tuple(out[k] for k in sorted(out))


def _build_contexts(values: tuple[str, ...]) -> tuple[NamedContext, ...]:
    out: dict[str, NamedContext] = {}
    for v in values:
        try:
            ctx = parse_build_context(v)
        except BuildContextError as exc:
            raise click.BadParameter(str(exc), param_hint="--build-context") from exc
        out[context_key(ctx.name)] = ctx  # the last one of a name wins, as in buildx
    return tuple(out.values())


def _tags(tags: tuple[str, ...], hint: str = "-t") -> tuple[str, ...]:
    """``-t`` (or ``name=``) names, checked before anything is built (as the docker CLI
    checks them)."""
    for t in tags:
        try:
            parse_image_ref(t)
        except InvalidReference as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from exc
    return tags


def _outputs(values: tuple[str, ...], load: bool, tags: tuple[str, ...]) -> tuple[Output, ...]:
    """``--output`` values (and ``--load``), checked before anything is built."""
    try:
        outs = [parse_output(o) for o in values if o != ""]  # buildx skips empty ones
    except OutputError as exc:
        raise click.BadParameter(str(exc), param_hint="--output") from exc
    if load and not any(o.loads for o in outs):
        outs.append(Output("docker"))
    to_stdout = [o for o in outs if o.stdout]
    if len(to_stdout) > 1:
        raise click.BadParameter("only one output can go to stdout (dest=-)",
                                 param_hint="--output")
    if to_stdout and sys.stdout.isatty():
        raise click.BadParameter(f"refusing to write type={to_stdout[0].type} to the terminal: "
                                 "redirect stdout (> FILE) or give dest=FILE",
                                 param_hint="--output")
    for o in outs:
        archive = o.dest if o.type in ("tar", "oci", "docker") and o.tar else None
        if archive is not None and archive.is_dir():
            raise click.BadParameter(f"dest={archive} is a directory: give a file name for "
                                     "the archive (or tar=false to write a layout directory)",
                                     param_hint="--output")
        if archive is not None and not archive.absolute().parent.is_dir():
            raise click.BadParameter(f"dest={archive}: {archive.absolute().parent} is not a "
                                     "directory; create it first", param_hint="--output")
        _tags(o.names, "--output")
        if o.push and not (tags or o.names):
            raise click.BadParameter(f"type={o.type} pushes the image: name it with -t NAME "
                                     "or name=NAME", param_hint="--output")
    if any(o.loads for o in outs):
        from .engine import EngineError, engine_address

        try:
            engine_address()
        except EngineError as exc:
            raise click.BadParameter(str(exc), param_hint="--load") from exc
    return tuple(outs)


_ENTITLEMENTS = ("security.insecure",)


def _cache_specs(values: tuple[str, ...], *, export: bool) -> tuple[CacheSpec, ...]:
    try:
        return tuple(spec for v in values for spec in parse_cache_specs(v, export=export))
    except CacheSpecError as exc:
        raise click.BadParameter(str(exc).partition(": ")[2],
                                 param_hint="--cache-to" if export else "--cache-from") from exc


def _context_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise click.BadParameter(f"{text} {what}: the context is a directory, - to read it (or "
                                 "the Dockerfile) from standard input, or an http(s) URL",
                                 param_hint="CONTEXT")
    return path


@click.command("build")
@click.argument("context", metavar="CONTEXT")  # a directory, - (stdin) or a URL
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False, path_type=Path),
              help="The Dockerfile [default: CONTEXT/Dockerfile].")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image (repeatable).")
@click.option("--build-arg", "build_args", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--target", help="Build this stage (and what it needs) only.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE label (repeatable).")
@click.option("--no-cache", is_flag=True, help="Run every step; do not reuse cached layers.")
@click.option("--explain", is_flag=True, help="Say why each step missed the cache.")
@click.option("--network", type=click.Choice(["default", "none", "host"]), default="default",
              help="RUN steps' network unless RUN --network says otherwise.")
@click.option("--push", is_flag=True, help="Push the -t names to their registries.")
@click.option("--pull", is_flag=True,
              help="Always ask the registry for a newer version of each base image.")
@click.option("-o", "--output", "outputs", multiple=True,
              help="DIR | - | type=local,dest=DIR | type=tar[,dest=FILE] | "
                   "type=oci[,dest=FILE][,tar=false] | type=docker[,dest=FILE][,tar=false] | "
                   "type=image[,push=true] | type=registry (repeatable; as buildx).")
@click.option("--load", is_flag=True,
              help="Load the image into the Docker engine ($DOCKER_HOST); -o type=docker.")
@click.option("--secret", "secrets", multiple=True,
              help="id=NAME,src=FILE or id=NAME,env=VAR (repeatable).")
@click.option("--progress", "progress_mode",
              type=click.Choice(["auto", "plain", "tty", "json", "quiet"]), default="auto",
              help="auto: tty on a terminal, else plain (or $BUILDKIT_PROGRESS); tty: the "
                   "live view where standard error is a terminal, as docker build.")
@click.option("--iidfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the image digest to this file.")
@click.option("--metadata-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write build metadata (JSON) to this file.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip")
@click.option("--source-date-epoch", default=None,
              help="Timestamps in the image [default: $SOURCE_DATE_EPOCH].")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Storage directory [default: $PYBUILD_STORAGE or ~/.local/share/pybuild].")
@click.option("--platform", default=None,
              help="Target platform(s) os/arch[/variant], comma-separated (two or more: an "
                   "image index) [default: this host's].")
@click.option("--differ", type=click.Choice(["auto", "overlay", "snapshot"]), default="auto",
              help="How RUN changes are captured: overlayfs, a snapshot diff, or overlayfs "
                   "where the kernel allows it (auto).")
@click.option("--ssh", "ssh", multiple=True,
              help="default[=SOCKET|KEY] or ID=SOCKET|KEY[,KEY]: an SSH agent (or key "
                   "files) for RUN --mount=type=ssh.")
@click.option("--allow", "allow", multiple=True, type=click.Choice(_ENTITLEMENTS),
              help="Grant an entitlement (security.insecure for RUN --security=insecure).")
@click.option("--add-host", "add_hosts", multiple=True,
              help="NAME:IP: a line of RUN steps' /etc/hosts (repeatable).")
@click.option("--shm-size", help="Size of /dev/shm in RUN steps (64m, 1g, bytes).")
@click.option("--ulimit", "ulimits", multiple=True,
              help="NAME=SOFT[:HARD]: a resource limit of RUN steps (repeatable).")
@click.option("--build-context", "build_contexts", multiple=True,
              help="NAME=DIR|docker-image://REF|oci-layout://DIR[@DIGEST]: stands in for the "
                   "stage or image NAME (repeatable).")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing but the image digest (and errors).")
@click.option("--annotation", "annotations", multiple=True,
              help="[manifest|manifest-descriptor[PLATFORM]:]KEY=VALUE (repeatable).")
@click.option("--cache-to", "cache_to", multiple=True,
              help="Export the build cache: type=local,dest=DIR or type=registry,ref=REF "
                   "[,mode=min|max][,ignore-error=true] (repeatable).")
@click.option("--cache-from", "cache_from", multiple=True,
              help="Import a build cache: type=local,src=DIR or type=registry,ref=REF "
                   "(repeatable).")
@click.option("--gc-keep-storage", "gc_keep_storage", envvar=GC_ENV,
              default=None, metavar="SIZE", callback=bound_option,
              help="After the build, prune the least recently used build cache down to SIZE "
                   "(512m, 10g; 0 or off: never) [default: $PYBUILD_GC_KEEP_STORAGE, else a "
                   "tenth of the disk, at most 10 GB].")
@classic_builder_flags
def build(context: str, dockerfile: Path | None, tags: tuple[str, ...],
          build_args: tuple[str, ...], target: str | None, labels: tuple[str, ...],
          no_cache: bool, explain: bool, network: str, push: bool, pull: bool,
          outputs: tuple[str, ...],
          secrets: tuple[str, ...], progress_mode: str, iidfile: Path | None,
          metadata_file: Path | None, compression: str, source_date_epoch: str | None,
          storage: Path | None, platform: str | None, differ: str, ssh: tuple[str, ...],
          allow: tuple[str, ...], load: bool, quiet: bool,
          annotations: tuple[str, ...], add_hosts: tuple[str, ...], shm_size: str | None,
          ulimits: tuple[str, ...], build_contexts: tuple[str, ...],
          cache_to: tuple[str, ...], cache_from: tuple[str, ...], gc_keep_storage: int | None,
          **classic: object) -> None:
    """Build an image from a Dockerfile and a context directory."""
    warn_classic_flags(classic)
    if quiet:
        if progress_mode not in ("auto", "quiet"):
            raise click.UsageError(f"--progress {progress_mode} and --quiet cannot be used "
                                   "together")
        progress_mode = "quiet"
    elif progress_mode == "auto":
        try:
            progress_mode = mode_from_env()
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    elif progress_mode == "tty":
        # docker build's: the live view, plain lines where standard error is no terminal
        progress_mode = "auto"
    dockerfile_text: str | None = None
    # docker build - or URL: the context (or the Dockerfile alone) from stdin or a download
    # (a local directory wins, as in the docker CLI: ~/go/src$ docker build github.com/me/app)
    from_stdin = context == "-" or (not os.path.isdir(context) and (
        "://" in context or context.startswith(("git@", "github.com/"))))
    if from_stdin:
        from .remote_context import context_from

        context_dir, dockerfile, dockerfile_text = context_from(context, dockerfile)
    else:
        context_dir = _context_dir(context)
    if not from_stdin and dockerfile == Path("-"):
        # buildx reads the Dockerfile from stdin; a build from it is never fast-pathed
        stdin = getattr(sys.stdin, "buffer", None)
        dockerfile, dockerfile_text = None, (
            stdin.read().decode("utf-8", "replace") if stdin is not None else sys.stdin.read())
    outs = _outputs(outputs, load, _tags(tags))
    if push and not tags:
        raise click.UsageError("--push needs at least one -t NAME to push to")
    if platform is not None:
        try:
            target_platforms(platform)
        except BuildError as exc:
            raise click.BadParameter(str(exc).partition(": ")[2], param_hint="--platform") \
                from exc
    check_owner(storage or default_storage_dir())  # named as this user, not as the namespace's root
    become_root()  # as a non-root user: root of a user namespace (docs/rootless.md)
    try:
        # each platform is checked again by the build; here the first, before anything runs
        parse_annotations(annotations, (platform or str(Platform.host())).split(",")[0],
                          index=len(target_platforms(platform)) > 1)
    except AnnotationError as exc:
        raise click.BadParameter(str(exc), param_hint="--annotation") from exc
    ssh_sockets, ssh_keys = _ssh(ssh)
    opts = BuildOptions(
        context=context_dir, storage=storage or default_storage_dir(), dockerfile=dockerfile,
        tags=tags, build_args=_build_args(build_args), target=target,
        labels=_kv(labels, "--label"), no_cache=no_cache, explain=explain, network=network,
        outputs=outs, secrets=_secrets(secrets), compression=compression,
        source_date_epoch=source_date_epoch, push=push, platform=platform, differ=differ,
        ssh=ssh_sockets, ssh_keys=ssh_keys, allow=frozenset(allow), pull=pull,
        dockerfile_text=dockerfile_text, annotations=annotations, add_hosts=_add_hosts(add_hosts),
        shm_size=_shm_size(shm_size), ulimits=_ulimits(ulimits),
        build_contexts=_build_contexts(build_contexts),
        cache_to=_cache_specs(cache_to, export=True),
        cache_from=_cache_specs(cache_from, export=False), gc_keep_storage=gc_keep_storage)
    if iidfile is not None:  # as buildx: a build that fails leaves no earlier image ID there
        iidfile.unlink(missing_ok=True)
    progress = BuildProgress(progress_mode)
    recorder = None if (outs or push or secrets or cache_to or cache_from or ssh or from_stdin
                        or dockerfile_text is not None or "," in (platform or "")) else Recorder.start()
    try:
        result = run_until_signal(run_build(opts, progress))
    except (BuildError, DockerfileError, ContextError, IgnoreFileError, PublishError,
            ExportError, LayerError, KeyAgentError) as exc:
        click.echo(f"ERROR: {exc}", err=True)
        progress.failed(str(exc), 1)
        sys.exit(1)
    except Interrupted as exc:
        click.echo(f"ERROR: {exc}", err=True)
        progress.failed(str(exc), 128 + exc.signum)
        sys.exit(128 + exc.signum)
    digest = str(result.digest)
    # the image ID as buildx gives it: the config's digest (an index: its own)
    image_id = digest if result.index else str(result.image.manifest.config.digest)
    if iidfile:
        iidfile.write_text(image_id)
    if metadata_file:
        config = {} if result.index else {  # an index has no config (as buildx)
            "containerimage.config.digest": str(result.image.manifest.config.digest)}
        # as buildx: the names -t or an image/registry output gave, left out when none
        names = list(tags) or [n for o in outs if o.type in ("image", "registry")
                               for n in o.names]
        metadata_file.write_text(json.dumps({
            "containerimage.digest": digest, **config,
            **({"image.name": ",".join(names)} if names else {}),
        }, indent=2))
    if recorder is not None:
        recorder.finish(progress_events(progress), digest,
                        str(result.image.manifest.config.digest), result.cache_keys)
    if not any(o.stdout for o in outs):  # else stdout holds the archive and nothing else
        # -q: the image ID, as docker build -q prints it (what --iidfile holds); else the
        # manifest digest, which names the image in a registry (NAME@DIGEST)
        click.echo(image_id if quiet else digest)
    global finished
    finished = True
